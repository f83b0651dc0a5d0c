"""Bad input at the API's door: a 400 (or 503) naming the field, never a 500, nothing half-written."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test.client import encode_multipart

from annotation import services
from annotation.feedback import MAX_JSON_DEPTH, MAX_TIME_SPENT_MS
from annotation.models import Assignment, ImportJob, Judgement, Prompt, Task
from tests.factories import jsonl, pairwise_lines

pytestmark = pytest.mark.django_db


def raw_post(client, url: str, body: str, **extra):
    """Posts a JSON text as is: the test client would re-encode a dict and hide the escapes."""
    return client.generic("POST", url, body.encode(), content_type="application/json", **extra)


@pytest.fixture
def leased(cast, api):
    assignment = services.assignment_lease(annotator=cast.annotator, project=cast.project)
    return api(cast.annotator), assignment


def judge(client, assignment, body: str):
    return raw_post(
        client,
        f"/api/v1/assignments/{assignment.pk}/judgement",
        body,
        HTTP_IDEMPOTENCY_KEY="k1",
    )


def assert_nothing_judged(assignment):
    assignment.refresh_from_db()
    assert assignment.status == Assignment.Status.LEASED
    assert Judgement.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ('{"choice": "A", "strength": 2, "rationale": "a\\u0000b"}', "rationale", "NUL"),
        ('{"choice": "A", "strength": 2, "rationale": "a\\ud800b"}', "rationale", "surrogate"),
        ('{"choice": "A", "strength": 2, "rationale": "\\udfff"}', "rationale", "surrogate"),
        ('{"choice": "A", "strength": 2, "x\\u0000y": 1}', "x\\u0000y", "key"),
        ('{"choice": "A", "strength": 2, "time_spent_ms": 2147483648}', "time_spent_ms", ""),
        ('{"choice": "A", "strength": 2, "time_spent_ms": -1}', "time_spent_ms", ""),
        (
            f'{{"choice": "A", "strength": 2, "time_spent_ms": {MAX_TIME_SPENT_MS + 1}}}',
            "time_spent_ms",
            "",
        ),
        ('{"choice": "A", "strength": 2, "rationale": "' + "x" * 10_001 + '"}', "rationale", ""),
        ('{"choice": "maybe"}', "choice", ""),
        ('{"choice": "A", "strength": 4}', "strength", ""),
        ('{"choice": "A"}', "strength", ""),
        ('{"choice": "A", "strength": 2, "extra": ' + "[" * 40 + "]" * 40 + "}", "extra", "deeper"),
        (
            '{"choice": "A", "strength": 2, "extra": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "body",
            "deeper",
        ),
    ],
)
def test_a_bad_judgement_is_a_400_naming_the_field_and_nothing_is_stored(
    leased, body, field, message
):
    client, assignment = leased
    response = judge(client, assignment, body)
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert errors[0]["field"].startswith(field), errors
    assert message in errors[0]["message"]
    assert_nothing_judged(assignment)


def test_the_longest_allowed_values_are_accepted(leased):
    client, assignment = leased
    body = (
        f'{{"choice": "B", "strength": 3, "time_spent_ms": {MAX_TIME_SPENT_MS},'
        f' "rationale": "{"y" * 10_000}", "note": {"[" * (MAX_JSON_DEPTH - 1)}{"]" * (MAX_JSON_DEPTH - 1)}}}'
    )
    response = judge(client, assignment, body)
    assert response.status_code == 201, response.content
    judgement = Judgement.objects.get()
    assert judgement.time_spent_ms == MAX_TIME_SPENT_MS and len(judgement.rationale) == 10_000


def test_an_escaped_pair_of_surrogates_is_one_character_and_accepted(leased):
    client, assignment = leased
    response = judge(client, assignment, '{"choice": "tie", "rationale": "\\ud83d\\ude00"}')
    assert response.status_code == 201, response.content
    assert Judgement.objects.get().rationale == "\U0001f600"


@pytest.mark.parametrize(
    "body",
    [
        '{"username": ' + "[" * 100_000 + "]" * 100_000 + ', "password": "x"}',
        '{"username": ' + '{"a": ' * 50 + "1" + "}" * 50 + ', "password": "x"}',
        '{"username": "ad\\u0000min", "password": "x"}',
        '{"username": "admin", "password": "\\ud800"}',
    ],
)
def test_the_anonymous_token_door_refuses_hostile_json_with_a_400(api, body):
    response = raw_post(api(), "/api/v1/auth/token", body)
    assert response.status_code == 400, response.content
    field = response.json()["errors"][0]["field"]
    assert field.split(".")[0] in ("username", "password", "body"), field


def test_a_nul_in_a_form_encoded_token_request_is_a_400(api):
    response = api().post(
        "/api/v1/auth/token",
        "username=ad%00min&password=x",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 400, response.content


def test_an_undecodable_body_is_a_400(api, leased):
    client, assignment = leased
    response = client.generic(
        "POST",
        f"/api/v1/assignments/{assignment.pk}/judgement",
        b'{"choice": "A", "rationale": "\xff\xfe"}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert response.status_code == 400
    assert_nothing_judged(assignment)


# --- imports through the API ------------------------------------------------------


def imports_url(cast) -> str:
    return f"/api/v1/projects/{cast.project.pk}/imports"


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ('{"prompt": "p", "responses": ["a", "b"], "metadata": {"k": "v\\u0000"}}', "metadata.k"),
        ('{"prompt": "p", "responses": ["a", "b"], "metadata": {"k\\u0000": 1}}', "metadata.k"),
        (
            '{"prompt": "p", "responses": ["a", "b"], "metadata": {"k": ["\\ud800"]}}',
            "metadata.k[0]",
        ),
        ('{"prompt": "p\\udc00", "responses": ["a", "b"]}', "prompt"),
        (
            '{"prompt": "p", "responses": ["a", {"text": "b", "model": "m\\u0000"}]}',
            "responses[1].model",
        ),
        ('{"prompt": "p", "responses": ["a", "b"], "id": "x\\u0000"}', "id"),
        (
            '{"prompt": "p", "responses": ["a", "b"], "metadata": '
            + '{"a": ' * 40
            + "1"
            + "}" * 41,
            "metadata.a",
        ),
        (
            '{"prompt": "p", "responses": ["a", "b"], "metadata": '
            + "[" * 100_000
            + "]" * 100_000
            + "}",
            "nested",
        ),
    ],
)
def test_an_unstorable_import_line_is_refused_by_line_and_field(cast, api, line, where):
    before = Prompt.objects.count()
    body = jsonl(pairwise_lines(1)) + line.encode() + b"\n"
    response = api(cast.manager).generic(
        "POST", imports_url(cast), body, content_type="application/x-ndjson"
    )
    assert response.status_code == 400, response.content
    job = ImportJob.objects.get(pk=response.json()["import_id"])
    assert job.status == ImportJob.Status.FAILED and job.errors[0]["line"] == 2
    assert where in job.errors[0]["message"], job.errors
    assert Prompt.objects.count() == before


def test_a_raw_upload_cut_short_is_refused_and_nothing_is_stored(cast, api, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    body = jsonl(pairwise_lines(5, start=100))
    cut = body[: body.index(b"\n", len(body) // 2) + 1]  # ends on whole, valid lines
    tasks = Task.objects.count()
    response = api(cast.manager).generic(
        "POST",
        imports_url(cast),
        b"",
        content_type="application/x-ndjson",
        CONTENT_LENGTH=str(len(body)),
        **{"wsgi.input": io.BytesIO(cut)},
    )
    assert response.status_code == 400, response.content
    error = response.json()["errors"][0]
    assert error["field"] == "body" and error["message"].startswith("the upload was cut short")
    assert ImportJob.objects.count() == 1  # the cast's own import, nothing more
    assert Task.objects.count() == tasks and not list(tmp_path.rglob("*.jsonl"))


@pytest.mark.parametrize("inline", [True, False])
@pytest.mark.parametrize("where", ["mid-file", "before-the-closing-boundary"])
def test_a_multipart_upload_cut_short_is_refused_and_nothing_is_stored(
    cast, api, settings, tmp_path, inline, where
):
    settings.MEDIA_ROOT = tmp_path
    if not inline:
        settings.TANDEM_IMPORT_INLINE_BYTES = 10
    content = jsonl(pairwise_lines(40, start=200))
    body = encode_multipart("BoUnDaRy", {"file": SimpleUploadedFile("tasks.jsonl", content)})
    if where == "mid-file":
        cut = body[: body.index(b"\n", len(body) // 2) + 1]
    else:  # every line arrived: only the multipart trailer is missing
        cut = body[: body.rindex(b"--BoUnDaRy--")]
    tasks = Task.objects.count()
    response = api(cast.manager).generic(
        "POST",
        imports_url(cast),
        b"",
        content_type="multipart/form-data; boundary=BoUnDaRy",
        CONTENT_LENGTH=str(len(body)),
        **{"wsgi.input": io.BytesIO(cut)},
    )
    assert response.status_code == 400, response.content
    assert "cut short" in response.json()["errors"][0]["message"]
    assert ImportJob.objects.count() == 1
    assert Task.objects.count() == tasks and not list(tmp_path.rglob("*.jsonl"))


@pytest.mark.django_db(transaction=True)
def test_a_broker_outage_is_a_503_and_nothing_is_stored(cast, api, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.TANDEM_IMPORT_INLINE_BYTES = 10
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # a closed port: the broker is down
    jobs = ImportJob.objects.count()
    upload = SimpleUploadedFile("big.jsonl", jsonl(pairwise_lines(5, start=400)))
    response = api(cast.manager).post(imports_url(cast), {"file": upload}, format="multipart")
    assert response.status_code == 503, response.content
    assert "try again" in response.json()["detail"]
    assert ImportJob.objects.count() == jobs and not list(tmp_path.rglob("*.jsonl"))
