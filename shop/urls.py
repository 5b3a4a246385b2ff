from django.urls import path

from shop import views

urlpatterns = [
    path("customers/", views.customers, name="shop-customers"),
    path("customers/<int:pk>/", views.customer_detail, name="shop-customer"),
    path("summary/", views.summary, name="shop-summary"),
]
