"""Websockets: a job's live events (/ws/jobs/<id>/) and the console's (/ws/jobs/).

They only forward group messages sent by workers.events after a commit; the database is
the source of truth, so a page that reconnects reloads state over HTTP first."""
from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from workers.events import JOBS_GROUP, job_group
from workers.permissions import can_view


class JobConsumer(AsyncJsonWebsocketConsumer):
    group: str = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        job_id = self.scope["url_route"]["kwargs"].get("job_id")
        if job_id is None:
            self.group = JOBS_GROUP
        else:
            visible = await database_sync_to_async(can_view)(user, int(job_id))
            if not visible:  # as for a job that does not exist: nothing is given away
                await self.close(code=4404)
                return
            self.group = job_group(int(job_id))
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def job_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["data"])
