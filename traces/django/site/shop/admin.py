from django.contrib import admin

from .models import Category, Customer, Order, OrderItem, Product


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug"]
    search_fields = ["name"]


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["name", "sku", "category", "price", "stock", "active"]
    list_filter = ["category", "active"]
    list_select_related = ["category"]
    search_fields = ["name", "sku"]


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "email", "city", "joined_at"]
    search_fields = ["name", "email", "city"]


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    extra = 0
    raw_id_fields = ["product"]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["pk", "customer", "status", "created_at", "shipping_city"]
    list_filter = ["status"]
    list_select_related = ["customer"]
    search_fields = ["customer__name", "shipping_city"]
    raw_id_fields = ["customer"]
    date_hierarchy = "created_at"
    inlines = [OrderItemInline]
