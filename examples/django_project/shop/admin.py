"""Orders in the admin (sitq's tasks are there too, from sitq.contrib.django)."""

from django.contrib import admin

from shop.models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    """Orders with their receipt's task id."""

    list_display = ("id", "email", "total_cents", "receipt_task_id", "receipt_sent")
