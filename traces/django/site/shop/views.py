"""Shop pages (HTML), the product search, the visitor's cart and the shop JSON API."""

from django.core.cache import cache
from django.core.paginator import Paginator
from django.db.models import Avg, Count, DecimalField, ExpressionWrapper, F, Q, Sum
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render

from blog.models import Author, Comment, Post, Tag

from .models import Category, Customer, Order, OrderItem, Product

PRODUCTS_PER_PAGE = 24
SORTS = {"name": "name", "price": "price", "-price": "-price", "new": "-created_at", "stock": "-stock"}
RECENT_MAX = 8

_LINE_TOTAL = ExpressionWrapper(F("quantity") * F("unit_price"), output_field=DecimalField())


def category_list(request):
    categories = cache.get("shop:categories")
    if categories is None:
        categories = list(
            Category.objects.annotate(n_products=Count("products"), avg_price=Avg("products__price"))
        )
        cache.set("shop:categories", categories, 60)
    return render(request, "shop/category_list.html", {"categories": categories})


def category_detail(request, slug):
    category = get_object_or_404(Category, slug=slug)
    sort = request.GET.get("sort", "name")
    products = category.products.filter(active=True).order_by(SORTS.get(sort, "name"), "pk")
    page = Paginator(products, PRODUCTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "shop/category_detail.html",
        {"category": category, "page": page, "sort": sort, "sorts": list(SORTS)},
    )


def _also_bought(product, limit=5):
    key = f"shop:also:{product.pk}"
    also = cache.get(key)
    if also is None:
        order_ids = OrderItem.objects.filter(product=product).values("order_id")
        also = list(
            Product.objects.filter(order_items__order_id__in=order_ids)
            .exclude(pk=product.pk)
            .annotate(times=Count("order_items"))
            .order_by("-times", "name")
            .values("pk", "slug", "name", "times")[:limit]
        )
        cache.set(key, also, 300)
    return also


def product_detail(request, pk, slug=None):
    product = get_object_or_404(Product.objects.select_related("category"), pk=pk)
    sales = product.order_items.exclude(order__status=Order.Status.CANCELLED).aggregate(
        units=Sum("quantity"),
        orders=Count("order", distinct=True),
        revenue=Sum(_LINE_TOTAL),
        avg_quantity=Avg("quantity"),
    )
    recent = [p for p in request.session.get("recent_products", []) if p != product.pk]
    request.session["recent_products"] = [product.pk, *recent][:RECENT_MAX]
    return render(
        request,
        "shop/product_detail.html",
        {"product": product, "sales": sales, "also_bought": _also_bought(product)},
    )


def search(request):
    query = request.GET.get("q", "").strip()
    products, posts = [], []
    if query:
        products = list(
            Product.objects.filter(Q(name__icontains=query) | Q(description__icontains=query))
            .select_related("category")
            .order_by("name")[:40]
        )
        posts = list(Post.objects.filter(title__icontains=query).select_related("author")[:20])
    return render(request, "shop/search.html", {"query": query, "products": products, "posts": posts})


def cart(request):
    ids = request.session.get("recent_products", [])
    by_id = Product.objects.select_related("category").in_bulk(ids)
    return render(request, "shop/cart.html", {"products": [by_id[i] for i in ids if i in by_id]})


def _product_json(p):
    return {
        "id": p.pk,
        "name": p.name,
        "sku": p.sku,
        "category": p.category.slug,
        "price": str(p.price),
        "stock": p.stock,
        "url": p.get_absolute_url(),
    }


def api_products(request):
    products = Product.objects.filter(active=True).select_related("category")
    category = request.GET.get("category")
    if category:
        products = products.filter(category__slug=category)
    sort = SORTS.get(request.GET.get("sort", "name"), "name")
    page = Paginator(products.order_by(sort, "pk"), PRODUCTS_PER_PAGE).get_page(request.GET.get("page"))
    return JsonResponse(
        {"page": page.number, "pages": page.paginator.num_pages, "results": [_product_json(p) for p in page]}
    )


def api_order(request, pk):
    order = get_object_or_404(
        Order.objects.select_related("customer").prefetch_related("items__product"), pk=pk
    )
    items = [
        {
            "product": it.product.name,
            "sku": it.product.sku,
            "quantity": it.quantity,
            "unit_price": str(it.unit_price),
            "subtotal": str(it.subtotal),
        }
        for it in order.items.all()
    ]
    return JsonResponse(
        {
            "id": order.pk,
            "customer": order.customer.name,
            "status": order.status,
            "created_at": order.created_at.isoformat(),
            "items": items,
            "total": str(order.total),
        }
    )


def api_stats(request):
    stats = cache.get("shop:stats")
    if stats is None:
        revenue = OrderItem.objects.exclude(order__status=Order.Status.CANCELLED).aggregate(r=Sum(_LINE_TOTAL))["r"]
        stats = {
            "counts": {
                "authors": Author.objects.count(),
                "tags": Tag.objects.count(),
                "posts": Post.objects.count(),
                "comments": Comment.objects.count(),
                "categories": Category.objects.count(),
                "products": Product.objects.count(),
                "customers": Customer.objects.count(),
                "orders": Order.objects.count(),
                "order_items": OrderItem.objects.count(),
            },
            "orders_by_status": dict(
                Order.objects.values_list("status").annotate(n=Count("pk")).order_by("status")
            ),
            "revenue": f"{revenue or 0:.2f}",
            # What a load driver needs to build valid URLs.
            "slugs": {
                "tags": list(Tag.objects.values_list("slug", flat=True)),
                "authors": list(Author.objects.values_list("slug", flat=True)),
                "categories": list(Category.objects.values_list("slug", flat=True)),
            },
        }
        cache.set("shop:stats", stats, 30)
    return JsonResponse(stats)
