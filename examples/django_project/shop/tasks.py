"""The shop's tasks. A worker runs them with Django set up: `python manage.py sitq_worker`."""

from django.db import close_old_connections

from shop.models import Order


def send_receipt(order_id: int) -> str:
    """Send an order's receipt (here: mark it sent). A plain function, so the worker runs it in
    a thread, where the ORM may be used."""
    # The worker's threads outlive a task: drop a connection the database has closed since.
    close_old_connections()
    order = Order.objects.get(pk=order_id)
    order.receipt_sent = True
    order.save(update_fields=["receipt_sent"])
    return f"receipt for order {order_id} sent to {order.email}"
