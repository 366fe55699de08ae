"""Backfill in the admin: start jobs, watch them, cancel, resume, retry their failures.

Options are validated by `backfill.lifecycle.create_job`, so the admin shows the same one-line
errors as `manage.py backfill_character`. Starting work needs the custom permission
`backfill.start_backfill` besides the model permissions.

"Backfill this character" is an action of the Character admin, which killboard declares
knowing nothing of backfill (killboard depends on no other app): this module brings it as an
extension of that admin (`killboard.admin.extend_admin`), with the permission it needs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from backfill import lifecycle, tasks
from backfill.models import BackfillJob, FailedKillmail
from backfill.paging import ZKB_PAGE_SIZE
from killboard.admin import AdminExtension, extend_admin
from killboard.inputs import is_whole_number
from killboard.models import Character

START_PERMISSION = "backfill.start_backfill"


class _DryRun(Exception):
    """Rolls back the job a validation created."""


def _whole_number(value: str, default: int | None) -> int | str | None:
    """A form's text as an int; anything else goes to create_job as is, which rejects it."""
    text = (value or "").strip()
    if not text:
        return default
    return int(text) if is_whole_number(text) else text


class BackfillOptionsForm(forms.Form):
    """The options of a backfill, as the CLI and the GraphQL mutation take them."""

    from_date = forms.CharField(
        required=False,
        help_text="YYYY-MM-DD: only killmails on or after this day. Empty: the whole history.",
        widget=forms.TextInput(attrs={"placeholder": "YYYY-MM-DD", "size": 12}),
    )
    max_pages = forms.CharField(
        required=False,
        help_text="At most this many pages of `limit` killmails, newest first. Empty: no bound.",
        widget=forms.TextInput(attrs={"size": 6}),
    )
    limit = forms.CharField(
        initial=str(ZKB_PAGE_SIZE),
        help_text="Killmails a page, 1 to 200.",
        widget=forms.TextInput(attrs={"size": 6}),
    )
    skip_existing = forms.BooleanField(
        required=False,
        initial=True,
        help_text="Unchecked: also refresh the zkb values of killmails already stored.",
    )

    def job_options(self) -> dict[str, Any]:
        """The cleaned options as `create_job` keywords."""
        data = self.cleaned_data
        return {
            "from_date": data.get("from_date") or None,
            "max_pages": _whole_number(data.get("max_pages", ""), None),
            "limit": _whole_number(data.get("limit", ""), ZKB_PAGE_SIZE),
            "skip_existing": bool(data.get("skip_existing")),
        }

    def validate_for(self, target_id: Any) -> None:
        """Validate through create_job: the job it creates is rolled back at once."""
        try:
            with transaction.atomic():
                lifecycle.create_job(target_id, **self.job_options())
                raise _DryRun
        except _DryRun:
            pass
        except lifecycle.InvalidBackfill as exc:
            raise ValidationError(str(exc)) from None


class CharacterBackfillForm(BackfillOptionsForm):
    """The options of "Backfill this character", checked for the selected characters."""

    def __init__(self, *args: Any, target_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_id = target_id

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors:
            self.validate_for(self.target_id)
        return cleaned


class BackfillJobAddForm(BackfillOptionsForm, forms.ModelForm):
    """The admin's add form: any character id (it need not be stored) and the options."""

    character_id = forms.CharField(
        label="Character id", widget=forms.TextInput(attrs={"size": 14, "autofocus": True})
    )

    class Meta:
        model = BackfillJob
        fields: list[str] = []

    field_order = ("character_id", "from_date", "max_pages", "limit", "skip_existing")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors:
            self.validate_for(cleaned.get("character_id"))
        return cleaned

    def _post_clean(self) -> None:
        # create_job validated the options and builds the job; the raw text of the fields
        # must not be copied onto the model instance and validated a second time.
        pass


class StartBackfillPermission:
    """The `start_backfill` permission of admin actions (`permissions=["start_backfill"]`)."""

    def has_start_backfill_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(START_PERMISSION)


class FailedKillmailInline(admin.TabularInline):
    """The killmails a job could not store, and why."""

    model = FailedKillmail
    fields = readonly_fields = ("killmail_id", "killmail_hash", "reason", "created_at")
    extra = 0
    can_delete = False
    verbose_name_plural = "failed killmails"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _clock(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@admin.register(BackfillJob)
class BackfillJobAdmin(StartBackfillPermission, admin.ModelAdmin):
    """Jobs with their progress; the add form starts one."""

    list_display = (
        "id",
        "target",
        "status",
        "progress_bar",
        "counters",
        "duration",
        "eta",
        "created_at",
    )
    list_display_links = ("id", "target")
    list_filter = ("status", "target_type")
    search_fields = ("=target_id", "=id")
    list_per_page = 50
    actions = ("cancel", "resume", "retry_failed")
    readonly_fields = (
        "target",
        "status",
        "progress_bar",
        "counters",
        "duration",
        "eta",
        "flower_tasks",
        "from_date",
        "max_pages",
        "limit",
        "skip_existing",
        "cursor",
        "paging_done",
        *BackfillJob.COUNTERS,
        "last_error",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        names = Character.objects.filter(id=OuterRef("target_id")).values("name")[:1]
        return super().get_queryset(request).annotate(character_name=Subquery(names))

    def get_list_display(self, request: HttpRequest) -> tuple[str, ...]:
        if settings.FLOWER_URL:
            return (*self.list_display, "flower_tasks")
        return self.list_display

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm]:
        if obj is None:
            kwargs["form"] = BackfillJobAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[Any, dict]]:
        if obj is None:
            return [(None, {"fields": list(BackfillJobAddForm.field_order)})]
        return [(None, {"fields": list(self.readonly_fields)})]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return self.readonly_fields if obj is not None else ()

    def get_inlines(self, request: HttpRequest, obj: Any) -> list[type]:
        return [FailedKillmailInline] if obj is not None else []

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and self.has_start_backfill_permission(request)

    def save_form(self, request: HttpRequest, form: forms.ModelForm, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        return lifecycle.create_job(form.cleaned_data["character_id"], **form.job_options())

    def save_model(self, request: HttpRequest, obj: BackfillJob, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # create_job saved the job; its first steps are queued once this request commits.
        tasks.start_job(obj.pk)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)

    # -- columns -----------------------------------------------------------------------------

    @admin.display(description="target", ordering="target_id")
    def target(self, obj: BackfillJob) -> str:
        name = getattr(obj, "character_name", "") or ""
        label = f"{obj.target_type} {obj.target_id}"
        return f"{label} ({name})" if name else label

    @admin.display(description="progress")
    def progress_bar(self, obj: BackfillJob) -> str:
        progress = obj.progress
        if progress is None:
            return f"{obj.killmails_listed} listed"
        percent = int(progress * 100)
        return format_html(
            '<progress class="backfill-progress" max="100" value="{}">{}%</progress> {}%',
            percent,
            percent,
            percent,
        )

    @admin.display(description="counters")
    def counters(self, obj: BackfillJob) -> str:
        return obj.counts_line()

    @admin.display(description="duration")
    def duration(self, obj: BackfillJob) -> str:
        return _clock(obj.duration)

    @admin.display(description="ETA")
    def eta(self, obj: BackfillJob) -> str:
        return _clock(obj.eta) if obj.is_active else "-"

    @admin.display(description="Flower")
    def flower_tasks(self, obj: BackfillJob) -> str:
        base = settings.FLOWER_URL.rstrip("/")
        if not base or not obj.task_ids:
            return "-"
        links = [(f"{base}/task/{task_id}", task_id[:8]) for task_id in reversed(obj.task_ids)]
        return format_html_join(" ", '<a href="{}" target="_blank" rel="noopener">{}</a>', links)

    # -- actions -----------------------------------------------------------------------------

    @admin.action(description="Cancel", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        cancelled = sum(lifecycle.cancel_job(job_id) for job_id in ids)
        self.message_user(request, f"Cancelled {cancelled} of {len(ids)} jobs (others had ended).")

    @admin.action(description="Resume", permissions=["start_backfill"])
    def resume(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        resumed = [job_id for job_id in ids if lifecycle.reopen_job(job_id)]
        for job_id in resumed:
            tasks.start_job(job_id)
        self.message_user(request, f"Resumed {len(resumed)} of {len(ids)} jobs.")

    @admin.action(description="Retry failed killmails", permissions=["start_backfill"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet) -> None:
        jobs = list(queryset.filter(failed__gt=0).values_list("pk", "failed"))
        started = [pk for pk, _ in jobs if lifecycle.reopen_job(pk, retry_failed=True)]
        for job_id in started:
            tasks.start_job(job_id)
        retried = sum(failed for pk, failed in jobs if pk in started)
        self.message_user(request, f"Retrying {retried} failed killmails of {len(started)} jobs.")


@admin.action(description="Backfill this character", permissions=["start_backfill"])
def backfill_this_character(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> HttpResponse | None:
    """Ask for the options on an intermediate page, then start one job per character."""
    characters = list(queryset.order_by("id"))
    applying = "apply" in request.POST
    form = CharacterBackfillForm(request.POST if applying else None, target_id=characters[0].id)
    if applying and form.is_valid():
        options = form.job_options()
        for character in characters:
            tasks.start_job(lifecycle.create_job(character.id, **options).pk)
        model_admin.message_user(request, f"Started {len(characters)} backfill jobs.")
        return HttpResponseRedirect(reverse("admin:backfill_backfilljob_changelist"))
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Backfill characters",
        "opts": model_admin.model._meta,
        "characters": characters,
        "form": form,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/backfill/backfill_character.html", context)


class CharacterBackfill(StartBackfillPermission, AdminExtension):
    """What backfill adds to the Character admin: "Backfill this character"."""

    actions = (backfill_this_character,)


extend_admin(Character, CharacterBackfill())
