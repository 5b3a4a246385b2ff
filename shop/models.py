"""A repair shop's data: the demo tenant-scoped app.

Column types are varied on purpose (text, int, bigint, smallint, numeric, bool, date,
timestamptz, uuid, jsonb, bytea, arrays, nullable columns) so that the copy engine has to
round-trip each one exactly. Every table carries `tenant_id`; uniqueness is per tenant.
"""
import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models

from tenancy.scoping import TenantScopedModel


class Employee(TenantScopedModel):
    class Role(models.TextChoices):
        OWNER = "owner"
        TECHNICIAN = "technician"
        CLERK = "clerk"

    full_name = models.CharField(max_length=120)
    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.TECHNICIAN)
    hired_on = models.DateField()
    is_active = models.BooleanField(default=True)
    hourly_rate = models.DecimalField(max_digits=8, decimal_places=2)
    skills = ArrayField(models.CharField(max_length=40), default=list, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "email"], name="employee_email_per_tenant")]

    def __str__(self):
        return self.full_name


class Customer(TenantScopedModel):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    first_name = models.CharField(max_length=80)
    last_name = models.CharField(max_length=80)
    email = models.EmailField(null=True, blank=True)
    phone = models.CharField(max_length=40, blank=True, default="")
    notes = models.TextField(null=True, blank=True)
    loyalty_points = models.IntegerField(default=0)
    tags = ArrayField(models.CharField(max_length=30), default=list, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "email"], name="customer_email_per_tenant")]
        indexes = [models.Index(fields=["tenant", "last_name", "first_name"], name="customer_name_idx")]

    def __str__(self):
        return f"{self.first_name} {self.last_name}"


class Device(TenantScopedModel):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="devices")
    kind = models.CharField(max_length=20)
    brand = models.CharField(max_length=40)
    model_name = models.CharField(max_length=80)
    serial_number = models.CharField(max_length=64)
    imei = models.CharField(max_length=20, null=True, blank=True)
    purchased_on = models.DateField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "serial_number"], name="device_serial_per_tenant")]

    def __str__(self):
        return f"{self.brand} {self.model_name} ({self.serial_number})"


class SparePart(TenantScopedModel):
    sku = models.CharField(max_length=32)
    name = models.CharField(max_length=120)
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField(default=0)
    reorder_level = models.SmallIntegerField(default=5)
    compatible_models = ArrayField(models.CharField(max_length=80), default=list, blank=True)
    is_discontinued = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "sku"], name="sparepart_sku_per_tenant")]

    def __str__(self):
        return f"{self.sku} {self.name}"


class Repair(TenantScopedModel):
    class State(models.TextChoices):
        RECEIVED = "received"
        DIAGNOSING = "diagnosing"
        WAITING_PARTS = "waiting_parts"
        IN_REPAIR = "in_repair"
        READY = "ready"
        DELIVERED = "delivered"
        CANCELLED = "cancelled"

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="repairs")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="repairs")
    assigned_to = models.ForeignKey(Employee, on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="repairs")
    ticket_number = models.BigIntegerField()
    status = models.CharField(max_length=20, choices=State.choices, default=State.RECEIVED)
    problem = models.TextField()
    priority = models.SmallIntegerField(default=2)
    received_at = models.DateTimeField()
    due_on = models.DateField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    labour_minutes = models.BigIntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    parts = models.ManyToManyField(SparePart, through="RepairPart", related_name="repairs")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "ticket_number"], name="repair_ticket_per_tenant")]
        indexes = [models.Index(fields=["tenant", "status"], name="repair_status_idx")]

    def __str__(self):
        return f"#{self.ticket_number}"


class RepairStatusHistory(TenantScopedModel):
    repair = models.ForeignKey(Repair, on_delete=models.CASCADE, related_name="history")
    from_status = models.CharField(max_length=20, null=True, blank=True)
    to_status = models.CharField(max_length=20)
    changed_at = models.DateTimeField()
    changed_by = models.ForeignKey(Employee, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    note = models.TextField(blank=True, default="")

    class Meta:
        verbose_name_plural = "repair status history"


class RepairPart(TenantScopedModel):
    repair = models.ForeignKey(Repair, on_delete=models.CASCADE, related_name="part_lines")
    part = models.ForeignKey(SparePart, on_delete=models.PROTECT, related_name="repair_lines")
    quantity = models.PositiveIntegerField(default=1)
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repair", "part"], name="repairpart_unique")]


class CostEstimate(TenantScopedModel):
    repair = models.ForeignKey(Repair, on_delete=models.CASCADE, related_name="estimates")
    line_items = models.JSONField(default=list)
    subtotal = models.DecimalField(max_digits=12, decimal_places=2)
    tax_rate = models.DecimalField(max_digits=5, decimal_places=4)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    valid_until = models.DateField()
    accepted = models.BooleanField(null=True, blank=True)
    created_at = models.DateTimeField()


class Signature(TenantScopedModel):
    repair = models.ForeignKey(Repair, on_delete=models.CASCADE, related_name="signatures")
    signed_by = models.CharField(max_length=120)
    signed_at = models.DateTimeField()
    image = models.BinaryField()
    sha256 = models.CharField(max_length=64)
