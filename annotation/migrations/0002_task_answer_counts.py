from django.db import migrations, models

# Counts for judgements that existed before the field did, so the export's agreement stays right.
_BACKFILL = """
UPDATE annotation_task t SET answer_counts = c.counts
FROM (
    SELECT task_id, jsonb_object_agg(answer, n) AS counts
    FROM (SELECT task_id, answer, count(*) AS n FROM annotation_judgement GROUP BY task_id, answer) per_answer
    GROUP BY task_id
) c
WHERE t.id = c.task_id
"""


def backfill(apps, schema_editor):
    Task = apps.get_model("annotation", "Task")
    Judgement = apps.get_model("annotation", "Judgement")
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_BACKFILL)
        return
    counts: dict[int, dict[str, int]] = {}
    for task_id, answer in Judgement.objects.values_list("task_id", "answer").iterator():
        per_task = counts.setdefault(task_id, {})
        per_task[answer] = per_task.get(answer, 0) + 1
    for task_id, per_task in counts.items():
        Task.objects.filter(pk=task_id).update(answer_counts=per_task)


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="answer_counts",
            field=models.JSONField(
                blank=True,
                db_default=models.Value({}, output_field=models.JSONField()),
                default=dict,
                help_text="Judgements per answer ({'A': 2, 'B': 1}), kept by submit under the task lock.",
            ),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
