"""Placing an order enqueues its receipt in the same transaction: if the order is rolled back,
so is the task."""

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import sitq.contrib.django as sitq_django
from shop.models import Order
from shop.tasks import send_receipt


class PaymentDeclined(Exception):
    """The payment failed: the order and its receipt task are rolled back."""


@csrf_exempt  # an API endpoint of the example; a real one authenticates its callers
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Create an order and enqueue its receipt, both or neither."""
    body = json.loads(request.body or b"{}")
    try:
        with transaction.atomic():
            order = Order.objects.create(email=body["email"], total_cents=body["total_cents"])
            order.receipt_task_id = sitq_django.enqueue(send_receipt, order.pk)
            order.save(update_fields=["receipt_task_id"])
            if body.get("decline"):
                raise PaymentDeclined(f"payment for order {order.pk} declined")
    except PaymentDeclined as exc:
        return JsonResponse({"error": str(exc)}, status=402)
    return JsonResponse({"order": order.pk, "task_id": order.receipt_task_id}, status=201)


@require_GET
def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    """The order, and the status of its receipt's task."""
    order = get_object_or_404(Order, pk=order_id)
    status = sitq_django.get_queue().get_status(order.receipt_task_id)
    return JsonResponse(
        {
            "order": order.pk,
            "receipt_sent": order.receipt_sent,
            "task_id": order.receipt_task_id,
            "task_status": None if status is None else status.value,
        }
    )
