"""Property-based fuzzing of every /api/v1 operation from our own OpenAPI schema (schemathesis).

For each role (annotator, manager, trainer, staff, anonymous) and operation, requests built from
/api/schema/ go to the WSGI app in process, and no answer may be a 5xx: schemathesis's coverage
phase (boundaries, enums, missing and mistyped fields), then values that broke Tandem before
(NUL, lone surrogates, integers past 2^31 and 2^63, deep nesting) in each body field and query
parameter of a valid request, then random valid and invalid cases. Path ids are real (a project
with tasks, a live lease of the caller's, a finished import, a model version, a member, a spare
token), so every operation runs its code rather than stopping at a 404. Derandomized and bounded
(about a minute on two cores)."""

import json
import os
import re
import time
from pathlib import Path

import pytest
import schemathesis
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from annotation import services
from annotation.errors import TandemError
from annotation.feedback import MAX_TIME_SPENT_MS
from annotation.models import Assignment, ImportJob, ModelVersion, Role
from annotation.services.images import image_store
from annotation.services.tokens import token_issue
from tests.annotation.image_support import drawn
from tests.factories import ProjectFactory, UserFactory, import_tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Random cases per operation, per generation mode (valid and invalid), per role allowed to use
# it, after the coverage phase and the hostile values.
# TANDEM_FUZZ_EXAMPLES raises it for a longer, deeper run.
EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "5"))
# At most this many of the coverage phase's cases per operation and role.
COVERAGE_CASES = 150
ROLES = ["annotator", "manager", "trainer", "staff", "anonymous"]
ORDINARY_FAULTS = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


class World:
    """The seeded ids, one user and token per role, and each caller's live lease."""

    def __init__(self, artifact: Path):
        self.project = ProjectFactory(creator=UserFactory(is_staff=True))
        self.users = {"staff": UserFactory(is_staff=True), "anonymous": None}
        for name, role in [
            ("annotator", Role.ANNOTATOR),
            ("manager", Role.MANAGER),
            ("trainer", Role.TRAINER),
        ]:
            self.users[name] = UserFactory()
            services.membership_set(
                project=self.project, username=self.users[name].username, role=role
            )
        self.import_job: ImportJob = import_tasks(self.project, 400)
        # A small folder, so a download that is (wrongly) served costs little.
        (artifact / "weights.txt").write_text("tiny")
        self.model = ModelVersion.objects.create(
            project=self.project,
            kind=ModelVersion.Kind.POLICY,
            round=1,
            name="π1",
            artifact_path=str(artifact),
        )
        # Someone the manager may demote or remove without breaking the rest of the run.
        self.member = UserFactory()
        services.membership_set(
            project=self.project, username=self.member.username, role=Role.ANNOTATOR
        )
        self.headers, self.spare_tokens = {}, {}
        for name, user in self.users.items():
            if user is not None:
                _, secret = token_issue(user=user, name="fuzz")
                self.headers[name] = {"Authorization": f"Token {secret}"}
                # A second token of the caller's, for the revoke operation to revoke.
                self.spare_tokens[name] = token_issue(user=user, name="spare")[0].token_key
        self.assignments: dict[str, Assignment] = {}
        # An image of the project, so the image routes are fuzzed past their look-up too.
        stored = image_store(project=self.project, data=drawn((600, 400)), name="fuzz.png")
        self.image_ref = f"sha256:{stored.sha256}"

    def live_assignment_id(self, role: str) -> int:
        """A lease of the caller's when their role may annotate, else the annotator's (which
        the caller must then not be able to touch)."""
        current = self.assignments.get(role)
        if current is not None:
            current.refresh_from_db()
            if current.status == Assignment.Status.LEASED:
                return current.pk
        for name in (role, "annotator"):
            user = self.users[name]
            if user is None:
                continue
            try:
                leased = services.assignment_lease(annotator=user, project=self.project)
            except TandemError:
                continue
            if leased is not None:
                self.assignments[role] = leased
                return leased.pk
        raise AssertionError("the seeded project ran out of tasks; seed more")

    def path_parameters(self, role: str, names) -> dict[str, int]:
        known = {
            "project_id": lambda: self.project.pk,
            "import_id": lambda: self.import_job.pk,
            "model_id": lambda: self.model.pk,
            "assignment_id": lambda: self.live_assignment_id(role),
            "image_id": lambda: self.image_ref,
            "username": lambda: self.member.username,
            "token_key": lambda: self.spare_tokens.get(role, "0" * 15),
        }
        return {name: known[name]() for name in names}


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """Import bodies: the schema says binary, so the generated value is sent as its bytes."""
    if isinstance(value, bytes):
        return value
    if hasattr(value, "data"):  # schemathesis's Binary wrapper
        return value.data
    return json.dumps(value).encode()


@pytest.fixture(scope="module")
def schema(django_db_setup, django_db_blocker):
    """Our own schema, as /api/schema/ serves it (a request may open a connection)."""
    with django_db_blocker.unblock():
        return schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


def operations(schema):
    found = []
    for result in schema.get_all_operations():
        found.append(result.ok())
    return found


def test_the_schema_documents_every_api_route(schema):
    """Nothing the fuzz run cannot reach: every /api/v1 route is an operation in the schema."""
    from annotation.api.urls import urlpatterns

    documented = {op.path for op in operations(schema)}
    routes = {
        "/api/v1/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(p.pattern)) for p in urlpatterns
    }
    assert routes <= documented, routes - documented


def test_each_view_documents_its_own_body(schema):
    """Every view's nested InputSerializer used to be one `Input` component: the judgement's
    body was documented for the token, user, project and member operations too."""
    components = schema.raw_schema["components"]["schemas"]
    assert {"TokenObtainInput", "UserCreateInput", "ProjectListCreateInput"} <= set(components)
    token = components["TokenObtainInput"]
    assert set(token["required"]) == {"username", "password"}
    judgement = components["JudgementInput"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in judgement["oneOf"]] == [
        "DecisiveJudgement",
        "EvenJudgement",
        "HallucinationJudgement",
        "HindsightJudgement",
    ]
    assert components["DecisiveJudgement"]["properties"]["time_spent_ms"]["maximum"] == (
        MAX_TIME_SPENT_MS
    )


CLOSED = (401, 403, 404)  # refused before the view looks at the request


class Runner:
    """Sends cases for one role, with real ids in the path; records every 5xx."""

    def __init__(self, world: World, role: str):
        self.world, self.role = world, role
        self.codes: list[int] = []
        self.failures: list[str] = []
        self.seen: set[tuple] = set()

    def send(self, operation, case) -> int | None:
        # Cases that differ only in the path ids we replace are one case: send it once.
        key = (
            operation.label,
            case.media_type,
            repr(case.query),
            repr(case.headers),
            repr(case.body),
        )
        if key in self.seen:
            return None
        self.seen.add(key)
        # Throttles would answer 429 to most cases and hide the view behind them.
        cache.clear()
        names = [p.name for p in operation.path_parameters]
        case.path_parameters = {
            **(case.path_parameters or {}),
            **self.world.path_parameters(self.role, names),
        }
        response = case.call(headers=self.world.headers.get(self.role, {}))
        self.codes.append(response.status_code)
        if response.status_code >= 500:
            self.failures.append(
                f"{self.role}: {response.status_code} {case.method} {case.formatted_path} "
                f"query={case.query!r} headers={case.headers!r} "
                f"media_type={case.media_type!r} body={case.body!r}"[:2000]
            )
        return response.status_code

    def coverage(self, schema, operation) -> bool:
        """Schemathesis's coverage phase (boundaries, enums, missing and mistyped fields).

        Returns False, having sent a few cases, when the role is refused before the view."""
        cases = list(
            schema.iter_coverage_cases(
                operation,
                generation_modes=list(MODES),
                generation_config=schema.config.generation_for(operation=operation),
            )
        )
        # The loop settings alone give ~1,700 cases; an even sample keeps every field in play.
        cases = cases[:: -(-len(cases) // COVERAGE_CASES) or 1]
        opened = False
        for sent, case in enumerate(cases):
            code = self.send(operation, case)
            opened = opened or (code is not None and code not in CLOSED)
            if sent == 2 and not opened:
                return False
        return True

    def fuzz(self, operation, mode, examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # report each case as found: no shrinking
            suppress_health_check=ORDINARY_FAULTS,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            self.send(operation, case)

        try:
            run()
        except Unsatisfiable:
            # No invalid variant exists (an operation without parameters or body).
            assert mode == GenerationMode.NEGATIVE, operation.label

    def hostile(self, schema, operation) -> None:
        """Values that broke Tandem before, in every body field and query parameter in turn,
        on top of a body the schema calls valid."""
        base = next(
            iter(
                schema.iter_coverage_cases(
                    operation,
                    generation_modes=[GenerationMode.POSITIVE],
                    generation_config=schema.config.generation_for(operation=operation),
                )
            ),
            None,
        )
        if base is None:
            return
        targets = []
        if isinstance(base.body, dict) and base.media_type == "application/json":
            targets += [("body", key) for key in base.body]
            # Nested past the recursion limit of any JSON decoder that recurses.
            deep = b"[" * 100_000 + b"]" * 100_000
            self.send(
                operation,
                operation.Case(
                    headers=dict(base.headers or {}), body=deep, media_type="application/json"
                ),
            )
        targets += [("query", p.name) for p in operation.query]
        for where, name in targets:
            for value in HOSTILE:
                if where == "query" and not isinstance(value, str | int) or value == LONE:
                    continue  # a URL cannot carry it
                body, query = base.body, dict(base.query or {})
                if where == "body":
                    # As JSON text: the escapes carry NUL and lone surrogates intact.
                    body = json.dumps({**base.body, name: value}).encode()
                else:
                    query[name] = value
                case = operation.Case(
                    headers=dict(base.headers or {}),
                    query=query,
                    body=body,
                    media_type=base.media_type,
                )
                self.send(operation, case)


MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
LONE = "\ud800"  # a lone surrogate: not Unicode, so psycopg cannot encode it
HOSTILE = [
    "a\x00b",  # Postgres stores no NUL
    LONE,
    "x" * 100_001,
    2**31,  # past a Postgres integer
    2**63,  # past a bigint
    -(2**63) - 1,
    1e308,
    [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    {"\x00": LONE},
]


def test_no_operation_answers_5xx_to_any_role(schema, tmp_path):
    world = World(tmp_path)
    started = time.monotonic()
    runners = []
    for role in ROLES:
        runner = Runner(world, role)
        runners.append(runner)
        for operation in operations(schema):
            if runner.coverage(schema, operation):
                runner.hostile(schema, operation)
                examples = EXAMPLES
            else:
                examples = 3  # still nothing may break before the access check
            for mode in MODES:
                runner.fuzz(operation, mode, examples)
    elapsed = time.monotonic() - started
    codes = [code for r in runners for code in r.codes]
    failures = [f for r in runners for f in r.failures]
    summary = f"{len(codes)} cases in {elapsed:.0f}s"
    assert not failures, f"{len(failures)} 5xx in {summary}:\n" + "\n".join(failures)
    # Not vacuous: most cases reached a view that answered them, not an access check.
    answered = sum(code not in (*CLOSED, 429) for code in codes)
    print(f"{summary}, {answered} past the access checks")
    assert answered > len(codes) // 3
