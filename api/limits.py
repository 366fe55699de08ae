"""What one GraphQL request may ask: its estimated cost, and introspection for staff only.

Depth, tokens and aliases bound a document's shape, but not its work: 15 aliases of
`killmails(limit: 50) { items { attackers { ... } } }` fit every shape limit and asked for
millions of values. So each operation's cost is estimated from the parsed document before
anything runs, and an operation over `GRAPHQL_MAX_COST` is refused with the estimate and the
limit in the message.

The estimate: a field without a selection costs 1; a field with one costs 1 plus what it
selects; a paged field (declared with `paged(max)`) multiplies what it selects by its `limit`
argument (its default when absent, at most `max`, as the resolver refuses more). Aliases and
fragments count every time they are used. So `killmails(limit: 50) { items { attackers {
character { id } } } }` costs about 50 x 100 x 2: the values it can answer.

Introspection (`__schema`, `__type`) is refused unless the user (the session's or the
token's) is staff: the schema is documentation for the people who run the deployment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from django.conf import settings
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    VariableNode,
    get_named_type,
)
from strawberry.extensions import SchemaExtension

# The key of a paged field's metadata: its largest page, which bounds its multiplier.
MAX_PAGE = "max_page"
STRAWBERRY_DEFINITION = "strawberry-definition"
INTROSPECTION_FIELDS = frozenset({"__schema", "__type"})
INTROSPECTION_MESSAGE = (
    "Introspection (__schema, __type) is for staff users only: ask an admin for the schema, "
    "or use a staff session or a staff user's token."
)


def paged(max_page: int) -> dict[str, int]:
    """Metadata of a field whose `limit` argument multiplies the cost of what it selects."""
    return {MAX_PAGE: max_page}


class CostEstimate:
    """The estimated cost of one operation of a parsed, not yet validated, document."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        # Fragments are costed once: a document spreading them in a tree stays linear.
        self._fragment_costs: dict[str, int] = {}

    def operation(self, operation: OperationDefinitionNode) -> int:
        """The cost of an operation."""
        root = self.schema.get_root_type(operation.operation)
        return self._selections(operation.selection_set, root)

    def _selections(self, selection_set: SelectionSetNode, parent: Any) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self._field(selection, parent)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.schema.get_type(condition.name.value) if condition else parent
                total += self._selections(selection.selection_set, inner)
            elif isinstance(selection, FragmentSpreadNode):
                total += self._fragment(selection.name.value)
        return total

    def _fragment(self, name: str) -> int:
        if name not in self._fragment_costs:
            self._fragment_costs[name] = 0  # a cycle (refused by validation) adds nothing
            fragment = self.fragments.get(name)
            if fragment is not None:
                parent = self.schema.get_type(fragment.type_condition.name.value)
                self._fragment_costs[name] = self._selections(fragment.selection_set, parent)
        return self._fragment_costs[name]

    def _field(self, node: FieldNode, parent: Any) -> int:
        if node.selection_set is None:
            return 1
        fields = parent.fields if isinstance(parent, GraphQLObjectType) else {}
        field = fields.get(node.name.value)
        child: GraphQLNamedType | None = get_named_type(field.type) if field else None
        return 1 + self._multiplier(node, field) * self._selections(node.selection_set, child)

    def _multiplier(self, node: FieldNode, field: GraphQLField | None) -> int:
        definition = field.extensions.get(STRAWBERRY_DEFINITION) if field else None
        most = getattr(definition, "metadata", {}).get(MAX_PAGE)
        if most is None:
            return 1
        limit = self._argument(node, "limit")
        if limit is None:
            limit = field.args["limit"].default_value if "limit" in field.args else most
        if isinstance(limit, bool) or not isinstance(limit, int):
            return most  # not a number: execution refuses it, the estimate assumes the worst
        return max(1, min(limit, most))

    def _argument(self, node: FieldNode, name: str) -> Any:
        for argument in node.arguments or ():
            if argument.name.value != name:
                continue
            value = argument.value
            if isinstance(value, VariableNode):
                return self.variables.get(value.name.value)
            if isinstance(value, IntValueNode):
                return int(value.value)
            return value  # another literal: not a number
        return None


def cost_rule(variables: Mapping[str, Any], operation_name: str | None, most: int) -> type:
    """A validation rule refusing the operation to run when it costs more than `most`."""

    class QueryCostRule(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            if operation_name and (node.name is None or node.name.value != operation_name):
                return  # not the operation this request runs
            fragments = {
                definition.name.value: definition
                for definition in self.context.document.definitions
                if isinstance(definition, FragmentDefinitionNode)
            }
            cost = CostEstimate(self.context.schema, fragments, variables).operation(node)
            if cost > most:
                self.report_error(
                    GraphQLError(
                        f"Query cost {cost:,} exceeds the maximum of {most:,} "
                        "(GRAPHQL_MAX_COST): ask for smaller pages (limit), fewer nested "
                        "lists or fewer aliases.",
                        node,
                        extensions={"code": "QUERY_TOO_COSTLY", "cost": cost, "maxCost": most},
                    )
                )

    return QueryCostRule


class StaffOnlyIntrospection(ValidationRule):
    """Refuses `__schema` and `__type` (`__typename` is not introspection of the schema)."""

    def enter_field(self, node: FieldNode, *_: Any) -> None:
        if node.name.value in INTROSPECTION_FIELDS:
            self.report_error(
                GraphQLError(INTROSPECTION_MESSAGE, node, extensions={"code": "FORBIDDEN"})
            )


class RequestLimits(SchemaExtension):
    """Adds this request's rules to validation: the cost limit and, for non-staff, no
    introspection. Validation runs before any resolver, so a refused request costs nothing."""

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        rules: list[type] = [
            cost_rule(context.variables or {}, context.operation_name, settings.GRAPHQL_MAX_COST)
        ]
        user = getattr(getattr(context.context, "request", None), "user", None)
        if not getattr(user, "is_staff", False):
            rules.append(StaffOnlyIntrospection)
        context.validation_rules = (*context.validation_rules, *rules)
        yield
