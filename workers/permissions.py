"""One permission model for pages and the API.

Everyone logged in may see every job (teammates share datasets, runs and devices); the
owner of a job, or an admin, may change it; only admins steer devices and the queue.
Pages call `check_modify` / `check_staff` (a Forbidden becomes a 403 page through
frontend's middleware); DRF views use the permission classes, which call the same rules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, User
from rest_framework.permissions import SAFE_METHODS, BasePermission

from .errors import Forbidden
from .models import Job

if TYPE_CHECKING:  # DRF loads this module while its own views module is loading
    from rest_framework.request import Request
    from rest_framework.views import APIView

AnyUser = AbstractBaseUser | AnonymousUser


class HasJob(Protocol):
    job: Job


def job_of(obj: Job | HasJob) -> Job:
    """The job behind a dataset or a model (they share its primary key), or the job itself."""
    return obj if isinstance(obj, Job) else obj.job


def can_modify(user: AnyUser, obj: Job | HasJob) -> bool:
    """Owners change their own jobs; admins may change any."""
    job = job_of(obj)
    return bool(user.is_authenticated and (user.pk == job.owner_id or getattr(user, "is_staff", False)))


def check_modify(user: AnyUser, obj: Job | HasJob) -> None:
    if not can_modify(user, obj):
        raise Forbidden("Only the owner of this job (or an admin) can change it.")


def check_staff(user: AnyUser, what: str = "steer devices and the queue") -> None:
    if not (user.is_authenticated and getattr(user, "is_staff", False)):
        raise Forbidden(f"Only admins can {what}.")


class IsOwnerOrReadOnly(BasePermission):
    """Anyone logged in may read; writes need the owner or an admin (object level)."""

    message = "Only the owner of this job (or an admin) can change it."

    def has_object_permission(self, request: Request, view: APIView, obj: Any) -> bool:
        return request.method in SAFE_METHODS or can_modify(request.user, obj)


class IsStaff(BasePermission):
    message = "Only admins can steer devices and the queue."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class IsStaffForWrites(BasePermission):
    """Anyone logged in may read (devices, the queue); only admins change them."""

    message = IsStaff.message

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.method in SAFE_METHODS or IsStaff().has_permission(request, view)


def current_user(user: AnyUser) -> User:
    """The logged-in user of a request (every page and endpoint requires a login)."""
    if not isinstance(user, User):
        raise Forbidden("Log in first.")
    return user
