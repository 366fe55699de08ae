"""Backfill in the admin: start jobs of any target, watch them, cancel, resume, retry their
failures; the coverage ledger (days, targets' months, live gaps), each with a chart of its
months drawn in plain HTML and CSS.

Options are validated by `backfill.lifecycle.build_job`, so the admin shows the same one-line
errors as `manage.py backfill`. A request only queues its jobs (`start_job(...,
background=True)`): without a broker the background runner's thread (config.background)
runs them, so the page answers at once and the job's page shows its progress. Resume also
restarts a running job that stopped moving (the watchdog's criterion). Starting work needs
the custom permission `backfill.start_backfill` besides the model permissions.

"Backfill this character" (and corporation, alliance) is an action of the entity's admin,
which killboard declares knowing nothing of backfill (killboard depends on no other app):
this module brings it as an extension of that admin (`killboard.admin.extend_admin`), with
the permission it needs. The three actions are one implementation (`start_backfills`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Case, Count, F, OuterRef, Q, QuerySet, Subquery, Sum, Value, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from backfill import coverage, lifecycle, planning, tasks
from backfill.coverage import MonthCoverage
from backfill.models import (
    BackfillJob,
    CoverageGap,
    DayCoverage,
    FailedKillmail,
    TargetMonthCoverage,
)
from backfill.paging import ZKB_PAGE_SIZE
from backfill.planner import Plan
from killboard.admin import AdminExtension, ReadOnlyAdmin, extend_admin
from killboard.inputs import is_whole_number
from killboard.models import (
    Alliance,
    Character,
    Corporation,
    Entity,
    ItemType,
    Region,
    SolarSystem,
)

START_PERMISSION = "backfill.start_backfill"
TargetType = BackfillJob.TargetType

# The entity tables that name a job's target.
TARGET_ENTITIES: dict[str, type[Entity]] = {
    TargetType.CHARACTER: Character,
    TargetType.CORPORATION: Corporation,
    TargetType.ALLIANCE: Alliance,
    TargetType.SHIP_TYPE: ItemType,
    TargetType.SOLAR_SYSTEM: SolarSystem,
    TargetType.REGION: Region,
}
# Days listed on a job's page (a history job of years has thousands): unfinished days first.
DAY_ROWS_SHOWN = 100
# Months of the whole store's chart above the day coverage list.
STORE_MONTHS_SHOWN = 12


def coverage_chart(months: list[MonthCoverage], caption: str, *, show_days: bool = False) -> str:
    """Months (newest first) as a bar chart in HTML and CSS: zKillboard's count and the
    store's, on the scale of the busiest month. `show_days`: the short days of each month."""
    scale = max((max(m.zkb_count, m.stored_count) for m in months), default=0) or 1
    rows = [
        {
            "label": month.label,
            "zkb_count": month.zkb_count,
            "stored_count": month.stored_count,
            "missing": month.missing,
            "state": month.state,
            "days": month.days,
            "short_days": month.short_days,
            "zkb_width": round(100 * month.zkb_count / scale, 1),
            "stored_width": round(100 * month.stored_count / scale, 1),
        }
        for month in months
    ]
    context = {"rows": rows, "caption": caption, "show_days": show_days}
    return render_to_string("admin/backfill/coverage_chart.html", context)


def with_panel(response: HttpResponse, panel: str) -> HttpResponse:
    """A change list's response with `panel` (HTML) shown first above the list."""
    context = getattr(response, "context_data", None)
    if context is not None and panel:
        context["extension_panels"] = [panel, *context.get("extension_panels", [])]
    return response


def _whole_number(value: str, default: int | None) -> int | str | None:
    """A form's text as an int; anything else goes to build_job as is, which rejects it."""
    text = (value or "").strip()
    if not text:
        return default
    return int(text) if is_whole_number(text) else text


def _date_input(help_text: str) -> forms.CharField:
    return forms.CharField(
        required=False,
        help_text=help_text,
        widget=forms.TextInput(attrs={"placeholder": "YYYY-MM-DD", "size": 12}),
    )


class BackfillOptionsForm(forms.Form):
    """The options of a backfill, as the CLI and the GraphQL mutations take them."""

    from_date = _date_input("Only killmails on or after this day. Empty: the whole history.")
    to_date = _date_input("Only killmails on or before this day. Empty: up to now.")
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
        """The cleaned options as `create_job` keywords (the target aside)."""
        data = self.cleaned_data
        return {
            "from_date": data.get("from_date") or None,
            "to_date": data.get("to_date") or None,
            "max_pages": _whole_number(data.get("max_pages", ""), None),
            "limit": _whole_number(data.get("limit", ""), ZKB_PAGE_SIZE),
            "skip_existing": bool(data.get("skip_existing")),
        }

    def validate_for(self, target_type: str, target_id: Any) -> None:
        """Validate the target and options as `create_job` will, without saving a job."""
        try:
            lifecycle.build_job(target_id, target_type=target_type, **self.job_options())
        except lifecycle.InvalidBackfill as exc:
            raise ValidationError(str(exc)) from None


class TargetBackfillForm(BackfillOptionsForm):
    """The options of "Backfill this character" (or corporation, alliance), checked for the
    selected rows."""

    def __init__(self, *args: Any, target_type: str, target_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_type = target_type
        self.target_id = target_id

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors:
            self.validate_for(self.target_type, self.target_id)
        return cleaned


class BackfillJobAddForm(BackfillOptionsForm, forms.ModelForm):
    """The admin's add form: a target of any zKillboard type (it need not be stored), and the
    options."""

    target_type = forms.ChoiceField(
        label="Target type",
        choices=[(t.value, t.label) for t in lifecycle.TARGET_TYPES],
        initial=TargetType.CHARACTER,
    )
    target_id = forms.CharField(
        label="Target id",
        help_text="The character's, corporation's, alliance's, ship type's, system's or "
        "region's id.",
        widget=forms.TextInput(attrs={"size": 14, "autofocus": True}),
    )

    class Meta:
        model = BackfillJob
        fields: list[str] = []

    field_order = (
        "target_type",
        "target_id",
        "from_date",
        "to_date",
        "max_pages",
        "limit",
        "skip_existing",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors:
            self.validate_for(cleaned["target_type"], cleaned["target_id"])
        return cleaned

    def _post_clean(self) -> None:
        # build_job validated the options and create_job builds the job; the raw text of the
        # fields must not be copied onto the model instance and validated a second time.
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


def _target_names() -> Case:
    """The name of each job's target from its entity table ("" while unknown or unnamed)."""
    return Case(
        *(
            When(
                target_type=target_type,
                then=Subquery(model.objects.filter(id=OuterRef("target_id")).values("name")[:1]),
            )
            for target_type, model in TARGET_ENTITIES.items()
        ),
        default=Value(""),
    )


# The job's change page: what it is, its plan, its progress by source, its counters.
JOB_FIELDSETS: list[tuple[str | None, dict[str, Any]]] = [
    (
        None,
        {
            "fields": (
                "target",
                "status",
                "progress_bar",
                "counters",
                "duration",
                "eta",
                "flower_tasks",
                "last_error",
            )
        },
    ),
    ("Options", {"fields": ("from_date", "to_date", "max_pages", "limit", "skip_existing")}),
    ("Plan", {"fields": ("plan_lines",)}),
    ("Progress by source", {"fields": ("sources", "cursor", "paging_done")}),
    ("Counters", {"fields": BackfillJob.COUNTERS}),
    ("Times", {"fields": ("created_at", "started_at", "finished_at", "updated_at")}),
]
DAY_FIELDS = ("days_done", "day_rows")
MONTH_FIELDS = ("month_coverage",)


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
        *(name for _, options in JOB_FIELDSETS for name in options["fields"]),
        *DAY_FIELDS,
        *MONTH_FIELDS,
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(target_name=_target_names())

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
        more = []
        if obj.days.exists():
            more.append(("Day dumps", {"fields": DAY_FIELDS}))
        if obj.target_type != TargetType.HISTORY:
            more.append(("Coverage by month", {"fields": MONTH_FIELDS}))
        return [*JOB_FIELDSETS[:4], *more, *JOB_FIELDSETS[4:]]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return self.readonly_fields if obj is not None else ()

    def get_inlines(self, request: HttpRequest, obj: Any) -> list[type]:
        return [FailedKillmailInline] if obj is not None else []

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and self.has_start_backfill_permission(request)

    def save_form(self, request: HttpRequest, form: forms.ModelForm, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        data = form.cleaned_data
        return lifecycle.create_job(
            data["target_id"], target_type=data["target_type"], **form.job_options()
        )

    def save_model(self, request: HttpRequest, obj: BackfillJob, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # create_job saved the job; its first steps are queued once this request commits.
        tasks.start_job(obj.pk, background=True)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)

    # -- columns -----------------------------------------------------------------------------

    @admin.display(description="target", ordering="target_id")
    def target(self, obj: BackfillJob) -> str:
        name = getattr(obj, "target_name", "") or ""
        return f"{obj.target} ({name})" if name else obj.target

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

    # -- the change page ---------------------------------------------------------------------

    @admin.display(description="plan")
    def plan_lines(self, obj: BackfillJob) -> str:
        plan = Plan.from_dict(obj.plan)
        if plan is None:
            return "Not planned yet." if obj.needs_plan else "None (the job predates plans)."
        lines = plan.lines(planning.rates())
        return format_html('<pre class="backfill-plan">{}</pre>', "\n".join(lines))

    @admin.display(description="by source")
    def sources(self, obj: BackfillJob) -> str:
        rows = [
            ("zKillboard", f"{obj.pages_fetched} pages fetched", obj.bodies_from_page),
            ("R2Z2", f"{obj.dumps_fetched} day dumps fetched", obj.bodies_from_dump),
            ("ESI", "one call a body", obj.bodies_from_esi),
        ]
        return format_html(
            '<table class="backfill-sources"><thead><tr><th>source</th><th>requests</th>'
            "<th>bodies</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="days")
    def days_done(self, obj: BackfillJob) -> str:
        done = Count("pk", filter=Q(done_at__isnull=False))
        days = obj.days.aggregate(total=Count("pk"), done=done, stored=Sum("stored"))
        return f"{days['done']} of {days['total']} days done, {days['stored'] or 0} stored"

    @admin.display(description="day by day")
    def day_rows(self, obj: BackfillJob) -> str:
        days = list(
            obj.days.order_by(F("done_at").desc(nulls_first=True), "-day")[: DAY_ROWS_SHOWN + 1]
        )
        rows = [
            (
                day.day,
                day.count,
                day.stored,
                f"{day.done_at:%Y-%m-%d %H:%M}" if day.done_at else "not yet",
            )
            for day in days[:DAY_ROWS_SHOWN]
        ]
        more = ""
        if len(days) > DAY_ROWS_SHOWN:
            more = f"The first {DAY_ROWS_SHOWN}: unfinished days, then the latest done."
        return format_html(
            '<table class="backfill-days"><thead><tr><th>day</th><th>zKillboard\'s count</th>'
            "<th>stored</th><th>done</th></tr></thead><tbody>{}</tbody></table>{}",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
            more,
        )

    @admin.display(description="target's months")
    def month_coverage(self, obj: BackfillJob) -> str:
        return coverage_chart(
            coverage.target_months(obj.target_type, obj.target_id),
            f"{obj.target}: zKillboard's statistics against the store, by month",
        )

    # -- actions -----------------------------------------------------------------------------

    @admin.action(description="Cancel", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        cancelled = sum(lifecycle.cancel_job(job_id) for job_id in ids)
        self.message_user(request, f"Cancelled {cancelled} of {len(ids)} jobs (others had ended).")

    @admin.action(description="Resume", permissions=["start_backfill"])
    def resume(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        resumed = [job_id for job_id in ids if tasks.resume_job(job_id, background=True)]
        self.message_user(request, f"Resumed {len(resumed)} of {len(ids)} jobs.")

    @admin.action(description="Retry failed killmails", permissions=["start_backfill"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet) -> None:
        jobs = list(queryset.filter(failed__gt=0).values_list("pk", "failed"))
        started = [pk for pk, _ in jobs if tasks.resume_job(pk, retry_failed=True, background=True)]
        retried = sum(failed for pk, failed in jobs if pk in started)
        self.message_user(request, f"Retrying {retried} failed killmails of {len(started)} jobs.")


@admin.register(DayCoverage)
class DayCoverageAdmin(ReadOnlyAdmin):
    """The store's coverage of each UTC day, as the day dumps measured it: read-only, under
    a chart of the whole store's last months."""

    list_display = ("day", "zkillboard_count", "stored", "state", "complete", "checked")
    list_filter = ("complete",)
    date_hierarchy = "day"
    list_per_page = 100
    fields = readonly_fields = list_display

    @admin.display(description="count by zKillboard", ordering="zkb_count")
    def zkillboard_count(self, obj: DayCoverage) -> int:
        return obj.zkb_count

    @admin.display(description="stored", ordering="stored_count")
    def stored(self, obj: DayCoverage) -> int:
        return obj.stored_count

    @admin.display(description="checked", ordering="checked_at")
    def checked(self, obj: DayCoverage) -> Any:
        return obj.checked_at

    @admin.display(description="state")
    def state(self, obj: DayCoverage) -> str:
        return _state_badge(obj.zkb_count, obj.stored_count)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        chart = coverage_chart(
            coverage.store_months(STORE_MONTHS_SHOWN),
            f"The whole store, last {STORE_MONTHS_SHOWN} months: zKillboard's count (R2Z2 "
            "totals.json) against the store's",
            show_days=True,
        )
        return with_panel(super().changelist_view(request, extra_context), chart)


def _state_badge(zkb_count: int, stored_count: int) -> str:
    """complete, extra, or short highlighted."""
    state = coverage.day_state(zkb_count, stored_count)
    if state != "short":
        return state
    return format_html('<strong class="coverage-short" style="color: #ef6c00">{}</strong>', state)


@admin.register(TargetMonthCoverage)
class TargetMonthCoverageAdmin(ReadOnlyAdmin):
    """Each backfill target's months: zKillboard's statistics against the store, read-only.
    Filtered to one target, the list shows its chart; each row's page shows its target's."""

    list_display = (
        "target_type",
        "target_id",
        "month",
        "zkb_count",
        "stored_count",
        "state",
        "checked_at",
    )
    list_filter = ("target_type",)
    search_fields = ("=target_id",)
    list_per_page = 100
    fields = readonly_fields = (*list_display, "chart")

    @admin.display(description="state")
    def state(self, obj: TargetMonthCoverage) -> str:
        return _state_badge(obj.zkb_count, obj.stored_count)

    @admin.display(description="the target's months")
    def chart(self, obj: TargetMonthCoverage) -> str:
        return _target_chart(obj.target_type, obj.target_id)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None) or {}
        if "cl" not in context:
            return response
        targets = context["cl"].queryset.values_list("target_type", "target_id").distinct()
        found = list(targets.order_by()[:2])
        return with_panel(response, _target_chart(*found[0]) if len(found) == 1 else "")


def _target_chart(target_type: str, target_id: int) -> str:
    return coverage_chart(
        coverage.target_months(target_type, target_id),
        f"{target_type.replace('_', ' ')} {target_id}: zKillboard's statistics against the "
        "store, by month",
    )


@admin.register(CoverageGap)
class CoverageGapAdmin(ReadOnlyAdmin):
    """Stretches of the live feed the follower missed, and their repair by the day dumps."""

    list_display = (
        "id",
        "first_sequence",
        "last_sequence",
        "start",
        "end",
        "repair",
        "closed_at",
        "noted_at",
    )
    list_filter = (("closed_at", admin.EmptyFieldListFilter),)
    fields = readonly_fields = list_display[1:]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("repair_job")

    @admin.display(description="repair job", ordering="repair_job")
    def repair(self, obj: CoverageGap) -> str:
        job = obj.repair_job
        if job is None:
            return "-"
        url = reverse("admin:backfill_backfilljob_change", args=[job.pk])
        return format_html('<a href="{}">#{} {}</a>', url, job.pk, job.status)


# -- "Backfill this character", corporation, alliance ----------------------------------------


def start_backfills(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet, target_type: str
) -> HttpResponse | None:
    """Ask for the options on an intermediate page, then start one job per selected row."""
    targets = list(queryset.order_by("id"))
    applying = "apply" in request.POST
    form = TargetBackfillForm(
        request.POST if applying else None, target_type=target_type, target_id=targets[0].id
    )
    if applying and form.is_valid():
        options = form.job_options()
        for target in targets:
            job = lifecycle.create_job(target.id, target_type=target_type, **options)
            tasks.start_job(job.pk, background=True)
        model_admin.message_user(request, f"Started {len(targets)} backfill jobs.")
        return HttpResponseRedirect(reverse("admin:backfill_backfilljob_changelist"))
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Backfill {opts.verbose_name_plural}",
        "opts": opts,
        "targets": targets,
        "kind": target_type,
        "action": f"backfill_this_{target_type}",
        "form": form,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/backfill/backfill_targets.html", context)


def backfill_action(target_type: BackfillJob.TargetType) -> Callable[..., HttpResponse | None]:
    """The admin action `backfill_this_<type>` ("Backfill this corporation"), which needs the
    `start_backfill` permission."""

    def action(
        model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
    ) -> HttpResponse | None:
        return start_backfills(model_admin, request, queryset, target_type)

    # Django names an action by its function: the name its forms post.
    action.__name__ = action.__qualname__ = f"backfill_this_{target_type}"
    description = f"Backfill this {target_type.label.lower()}"
    return admin.action(description=description, permissions=["start_backfill"])(action)


class TargetBackfill(StartBackfillPermission, AdminExtension):
    """What backfill adds to the admin of an entity it backfills: "Backfill this <type>"."""

    def __init__(self, target_type: BackfillJob.TargetType) -> None:
        self.actions = (backfill_action(target_type),)


extend_admin(Character, TargetBackfill(TargetType.CHARACTER))
extend_admin(Corporation, TargetBackfill(TargetType.CORPORATION))
extend_admin(Alliance, TargetBackfill(TargetType.ALLIANCE))
