"""A tiny tenant-facing JSON API: what a tenant's own users hit, served from wherever the
tenant lives. The tenant comes from the host name (tenancy.middleware).

A demo: no authentication, anyone who reaches a tenant's host may read and write its rows.
Bad input is a 400 with a message, never a 500."""
import json

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, router, transaction
from django.http import Http404, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from shop.models import Customer, Repair


def _tenant_or_404(request):
    if request.tenant_route is None:
        raise Http404("no tenant at this host")
    return request.tenant_route


def _customer_json(c: Customer) -> dict:
    return {"id": c.pk, "public_id": str(c.public_id), "first_name": c.first_name, "last_name": c.last_name,
            "email": c.email, "loyalty_points": c.loyalty_points, "tags": c.tags}


MAX_LIMIT = 500


def _limit(request) -> int:
    """`?limit=`: ASCII digits only (int() also takes "١٢", "+3" and " 7"), at most MAX_LIMIT."""
    raw = request.GET.get("limit", "50")
    if not (raw.isascii() and raw.isdigit()):
        raise ValidationError(f"limit must be a whole number from 0 to {MAX_LIMIT}")
    return min(int(raw), MAX_LIMIT)


def _text(data: dict, name: str, required: bool = True):
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} is required and must be a string" if required else f"{name} must be a string")
    max_length = Customer._meta.get_field(name).max_length
    if len(value) > max_length:
        raise ValidationError(f"{name} is longer than {max_length} characters")
    if "\x00" in value:
        raise ValidationError(f"{name} must not contain NUL characters")
    return value


def _new_customer(body: bytes) -> Customer:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise ValidationError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ValidationError("the body must be a JSON object")
    customer = Customer(first_name=_text(data, "first_name"), last_name=_text(data, "last_name"),
                        email=_text(data, "email", required=False), created_at=timezone.now())
    if customer.email is not None:
        validate_email(customer.email)
    return customer


def _bad(exc: ValidationError, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": f"bad customer: {'; '.join(exc.messages)}"}, status=status)


@csrf_exempt
def customers(request):
    _tenant_or_404(request)
    if request.method == "POST":
        try:
            customer = _new_customer(request.body)
        except ValidationError as exc:
            return _bad(exc)
        try:
            with transaction.atomic(using=router.db_for_write(Customer)):
                customer.save()
        except IntegrityError:
            return JsonResponse({"error": "bad customer: a customer with this email exists"}, status=409)
        return JsonResponse(_customer_json(customer), status=201)
    try:
        limit = _limit(request)
    except ValidationError as exc:
        return JsonResponse({"error": exc.messages[0]}, status=400)
    rows = [_customer_json(c) for c in Customer.objects.order_by("id")[:limit]]
    return JsonResponse({"count": Customer.objects.count(), "results": rows})


@csrf_exempt
def customer_detail(request, pk):
    _tenant_or_404(request)
    try:
        customer = Customer.objects.get(pk=pk)
    except Customer.DoesNotExist:
        raise Http404("no such customer") from None
    if request.method == "DELETE":
        customer.delete()
        return JsonResponse({"deleted": pk})
    return JsonResponse(_customer_json(customer))


def summary(request):
    route = _tenant_or_404(request)
    return JsonResponse({"tenant": route.slug, "placement": route.placement,
                         "customers": Customer.objects.count(), "repairs": Repair.objects.count()})
