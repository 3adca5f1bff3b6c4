"""The ``Task`` model: no table (``managed = False``), only its content type and its one
permission, ``sitq.view_task``."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Task",
            fields=[
                ("id", models.CharField(max_length=255, primary_key=True, serialize=False)),
            ],
            options={
                "verbose_name": "task",
                "verbose_name_plural": "tasks",
                "managed": False,
                "default_permissions": ("view",),
            },
        ),
    ]
