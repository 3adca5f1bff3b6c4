"""An order, and the id of the task that sends its receipt."""

from django.db import models


class Order(models.Model):
    """An order; ``receipt_task_id`` is known before the transaction commits."""

    email = models.EmailField()
    total_cents = models.PositiveIntegerField()
    receipt_task_id = models.CharField(max_length=64, blank=True)
    receipt_sent = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"order {self.pk} for {self.email}"
