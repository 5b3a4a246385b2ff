"""A tiny tenant-facing JSON API: what a tenant's own users hit, served from wherever the
tenant lives. The tenant comes from the host name (tenancy.middleware)."""
import json

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


@csrf_exempt
def customers(request):
    _tenant_or_404(request)
    if request.method == "POST":
        try:
            data = json.loads(request.body or b"{}")
            customer = Customer(first_name=str(data["first_name"]), last_name=str(data["last_name"]),
                                email=data.get("email"), created_at=timezone.now())
        except (ValueError, KeyError, TypeError) as exc:
            return JsonResponse({"error": f"bad customer: {exc}"}, status=400)
        customer.save()
        return JsonResponse(_customer_json(customer), status=201)
    limit = min(int(request.GET.get("limit", 50)), 500)
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
