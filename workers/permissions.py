"""One permission model for pages and the API.

Seeing: a job (dataset, model, evaluation, export) is visible to its owner and admins,
and by its `visibility`: "team" (the default) to the members of the owner's teams
(Django groups; an owner in no team shares with everyone, as before teams existed),
"public" to everyone logged in, "private" to nobody else. Lists filter with `visible_q`;
every page and endpoint of one object checks `can_view` (frontend's middleware, by the
object's id in the URL), answering 404 so that what exists is not given away.

Changing: the owner, an admin of one of the owner's teams, or a site admin. Only site
admins steer devices, the queue, limits and teams. Pages call `check_modify` /
`check_staff` (a Forbidden becomes a 403 page through frontend's middleware); DRF views
use the permission classes, which call the same rules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Exists, OuterRef, Q
from rest_framework.permissions import SAFE_METHODS, BasePermission

from .errors import Forbidden
from .models import Job, TeamAdmin, Visibility

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
    """Owners change their own jobs; team admins those of their teams' members; site
    admins any."""
    job = job_of(obj)
    if not user.is_authenticated:
        return False
    if user.pk == job.owner_id or getattr(user, "is_staff", False):
        return True
    return TeamAdmin.objects.filter(user_id=user.pk, team__user__id=job.owner_id).exists()


def shares_team_q(user: AnyUser, owner_field: str) -> Q:
    """Rows whose owner (`owner_field`) is `user`, shares a team with them, or is in no team."""
    memberships = get_user_model().groups.through.objects
    mine = memberships.filter(user_id=cast(int, user.pk)).values("group_id")
    shares_a_team = Exists(memberships.filter(user_id=OuterRef(owner_field), group_id__in=mine))
    in_no_team = ~Exists(memberships.filter(user_id=OuterRef(owner_field)))
    return Q(**{owner_field: user.pk}) | shares_a_team | in_no_team


def visible_q(user: AnyUser, prefix: str = "") -> Q:
    """The jobs `user` may see, as a filter; `prefix` reaches the job from another model
    ("job__" for datasets and models)."""
    if not user.is_authenticated:
        return Q(pk__in=[])
    if getattr(user, "is_staff", False):
        return Q()
    return (
        Q(**{f"{prefix}owner_id": user.pk})
        | Q(**{f"{prefix}visibility": Visibility.PUBLIC})
        | (Q(**{f"{prefix}visibility": Visibility.TEAM}) & shares_team_q(user, f"{prefix}owner_id"))
    )


def can_view(user: AnyUser, obj: Job | HasJob | int) -> bool:
    job_id = obj if isinstance(obj, int) else job_of(obj).pk
    return Job.objects.filter(visible_q(user), pk=job_id).exists()


def check_modify(user: AnyUser, obj: Job | HasJob) -> None:
    if not can_modify(user, obj):
        raise Forbidden("Only the owner of this job (or an admin) can change it.")


def check_staff(user: AnyUser, what: str = "steer devices and the queue") -> None:
    if not (user.is_authenticated and getattr(user, "is_staff", False)):
        raise Forbidden(f"Only admins can {what}.")


class IsOwnerOrReadOnly(BasePermission):
    """Whoever may see it may read; writes need the owner or an admin (object level).
    (Seeing is checked for every object URL by frontend's middleware, before the view.)"""

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
