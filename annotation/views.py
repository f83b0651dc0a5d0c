from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from . import selectors


@login_required
def home(request):
    return render(
        request,
        "annotation/home.html",
        {"projects": selectors.project_visible_to(user=request.user)},
    )
