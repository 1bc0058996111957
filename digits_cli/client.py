"""A small Python client of the DIGITS-NG REST API (what the `digits` CLI is built on).

    from digits_cli.client import Client

    api = Client.from_env()  # DIGITS_URL and DIGITS_TOKEN, or what `digits login` saved
    dataset = api.dataset_create(name="shapes", folder="/data/shapes", image_width=28, image_height=28)
    api.wait(dataset["id"])
    model = api.model_create(name="lenet", dataset=dataset["id"], network="lenet", epochs=10)
    api.wait(model["id"])
    evaluation = api.evaluate(model["id"], split="val")
    print(api.wait(evaluation["id"], kind="evaluation")["metrics"]["top1"])

Every error the server gives becomes an ApiError with its message and, when fields are to
blame, their messages. Only httpx: no Django, nothing of the server is imported.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
CHUNK = 8 << 20  # upload chunk: the server takes up to 16 MiB
FINISHED = ("done", "error", "aborted", "timed_out")


def config_path() -> Path:
    return Path(os.environ.get("DIGITS_CONFIG") or Path.home() / ".config" / "digits" / "config.json")


def load_config() -> dict[str, str]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(url: str, token: str) -> Path:
    """Saved readable by its owner only: it holds a token."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    os.chmod(path, 0o600)
    return path


class ApiError(Exception):
    """The server refused a request (or could not be reached)."""

    def __init__(self, message: str, status: int = 0, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors or {}

    def __str__(self) -> str:
        text = super().__str__()
        fields = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in self.errors.items()
                           if " ".join(messages) not in text)
        return f"{text} ({fields})" if fields else text


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 120) -> None:
        config = load_config()
        self.url = (url or os.environ.get("DIGITS_URL") or config.get("url") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("DIGITS_TOKEN") or config.get("token") or ""
        headers = {"Authorization": f"Token {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, follow_redirects=False)

    @classmethod
    def from_env(cls) -> Client:
        return cls()

    # -- plumbing -----------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"Cannot reach {self.url} ({exc}). Is the server running? Set DIGITS_URL or run `digits login`.") from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _error(self, response: httpx.Response) -> ApiError:
        if response.status_code == 401 or (response.status_code == 302 and "login" in response.headers.get("location", "")):
            return ApiError("Not logged in: run `digits login` or set DIGITS_TOKEN.", response.status_code)
        try:
            body = response.json()
        except ValueError:
            return ApiError(f"{response.status_code} {response.reason_phrase}: {response.text[:300]}", response.status_code)
        if isinstance(body, dict):
            errors = body.get("errors") if isinstance(body.get("errors"), dict) else {}
            return ApiError(str(body.get("detail") or body), response.status_code, errors)
        return ApiError(str(body), response.status_code)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        response = self.request("POST", path, json=data, **kwargs) if "files" not in kwargs else self.request(
            "POST", path, data={k: v for k, v in (data or {}).items() if v is not None}, **kwargs
        )
        return response.json() if response.content else None

    def patch(self, path: str, data: dict[str, Any]) -> Any:
        return self.request("PATCH", path, json=data).json()

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def pages(self, path: str, limit: int | None = None, **params: Any) -> Iterator[dict[str, Any]]:
        """Every row of a paginated list (or the first `limit`)."""
        page, seen = 1, 0
        while True:
            data = self.get(path, page=page, page_size=min(500, limit or 500), **params)
            rows = data["results"] if isinstance(data, dict) else data
            for row in rows:
                yield row
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not isinstance(data, dict) or not data.get("next"):
                return
            page += 1

    # -- login --------------------------------------------------------------------------

    def obtain_token(self, username: str, password: str) -> str:
        return self.request("POST", "/api/token/", data={"username": username, "password": password}).json()["token"]

    # -- jobs ---------------------------------------------------------------------------

    def job(self, job_id: int, kind: str | None = None) -> dict[str, Any]:
        """A dataset, model, evaluation or export by its id (`kind` saves a lookup)."""
        paths = {"dataset": "datasets", "model": "models", "evaluation": "evaluations", "export": "exports"}
        if kind is None:
            kind = self.get(f"/api/jobs/{job_id}/")["kind"]
        if kind not in paths:  # a kind without its own endpoint: the job itself
            return {"id": job_id, "job": self.get(f"/api/jobs/{job_id}/")}
        return self.get(f"/api/{paths[kind]}/{job_id}/")

    def wait(
        self, job_id: int, *, kind: str | None = None, poll: float = 2.0, timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """The object once its job finished (done, error or aborted)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            data = self.job(job_id, kind)
            kind = kind or data["job"]["kind"]
            if on_update:
                on_update(data)
            if data["job"]["status"] in FINISHED:
                return data
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(f"Job {job_id} is still {data['job']['status']} after {timeout:g} s.")
            time.sleep(poll)

    def log(self, job_id: int, offset: int = 0) -> tuple[str, int]:
        """The log from byte `offset` on, and the offset to ask from next time."""
        response = self.request("GET", f"/api/jobs/{job_id}/log/", params={"offset": offset}) if offset else self.request(
            "GET", f"/api/jobs/{job_id}/log/"
        )
        data = response.content
        return data.decode("utf-8", "replace"), offset + len(data)

    # -- datasets -----------------------------------------------------------------------

    def datasets(self, limit: int | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
        return self.pages("/api/datasets/", limit, **filters)

    def dataset(self, dataset_id: int) -> dict[str, Any]:
        return self.get(f"/api/datasets/{dataset_id}/")

    def dataset_create(self, **fields: Any) -> dict[str, Any]:
        return self.post("/api/datasets/", fields)

    def dataset_delete(self, dataset_id: int) -> None:
        self.delete(f"/api/datasets/{dataset_id}/")

    def upload(self, path: str | Path, progress: Callable[[int, int], None] | None = None) -> str:
        """Send an archive in chunks (resumable: a failed chunk is sent again from the
        offset the server has); returns the upload's id."""
        path = Path(path)
        size = path.stat().st_size
        upload = self.post("/api/uploads/", {"filename": path.name, "size": size})
        offset = upload["offset"]
        with path.open("rb") as fh:
            while offset < size:
                fh.seek(offset)
                chunk = fh.read(CHUNK)
                for attempt in range(3):
                    try:
                        upload = self.request("PUT", f"/api/uploads/{upload['id']}/", content=chunk,
                                              headers={"Upload-Offset": str(offset), "Content-Type": "application/octet-stream"}).json()
                        break
                    except ApiError:
                        if attempt == 2:
                            raise
                        upload = self.get(f"/api/uploads/{upload['id']}/")  # resume from what the server has
                        if upload["offset"] != offset:
                            break
                offset = upload["offset"]
                if progress:
                    progress(offset, size)
        return str(upload["id"])

    # -- models -------------------------------------------------------------------------

    def models(self, limit: int | None = None, **filters: Any) -> Iterator[dict[str, Any]]:
        return self.pages("/api/models/", limit, **filters)

    def model(self, model_id: int) -> dict[str, Any]:
        return self.get(f"/api/models/{model_id}/")

    def model_create(self, **fields: Any) -> dict[str, Any]:
        return self.post("/api/models/", fields)

    def model_action(self, model_id: int, action: str, **fields: Any) -> dict[str, Any]:
        """abort, resume or clone (clone takes overriding fields)."""
        return self.post(f"/api/models/{model_id}/{action}/", fields)

    def model_delete(self, model_id: int) -> None:
        self.delete(f"/api/models/{model_id}/")

    def metrics(self, model_id: int, after: int | None = None) -> dict[str, list[dict[str, Any]]]:
        return self.get(f"/api/models/{model_id}/metrics/", after=after)

    def classify(self, model_id: int, image: str | Path, *, epoch: float | None = None, views: bool = False) -> dict[str, Any]:
        with Path(image).open("rb") as fh:
            data = {"epoch": epoch, "views": "true" if views else None}
            return self.post(f"/api/models/{model_id}/classify/", data, files={"image": (Path(image).name, fh)})

    def evaluate(
        self, model_id: int, *, epoch: float | None = None, split: str | None = None, image_list: str | None = None,
        list_path: str | None = None, image_folder: str = "", images: list[str | Path] | None = None,
    ) -> dict[str, Any]:
        """Classify many: one source, a split, a list (its text, or a server path), or files."""
        fields = {"epoch": epoch, "split": split, "image_list": image_list, "list_path": list_path, "image_folder": image_folder or None}
        if images:
            handles = [Path(p).open("rb") for p in images]
            try:
                return self.post(f"/api/models/{model_id}/evaluations/", fields,
                                 files=[("images", (Path(p).name, fh)) for p, fh in zip(images, handles)])
            finally:
                for fh in handles:
                    fh.close()
        return self.post(f"/api/models/{model_id}/evaluations/", {k: v for k, v in fields.items() if v is not None})

    def evaluation_images(self, evaluation_id: int, **params: Any) -> dict[str, Any]:
        return self.get(f"/api/evaluations/{evaluation_id}/images/", **params)

    def export(self, model_id: int, epoch: float | None = None) -> dict[str, Any]:
        return self.post(f"/api/models/{model_id}/exports/", {"epoch": epoch})

    def download(self, model_id: int, dest: str | Path, *, fmt: str = "archive", epoch: float | None = None) -> Path:
        """Save a download (archive, onnx, pt2, triton) into `dest` (a folder: the server's file name)."""
        params = {"epoch": epoch} if epoch is not None else {}
        try:
            with self.http.stream("GET", f"/api/models/{model_id}/download/{fmt}/", params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response)
                dest = Path(dest)
                if dest.is_dir():
                    disposition = response.headers.get("content-disposition", "")
                    name = disposition.split("filename=")[-1].strip('"') if "filename=" in disposition else f"model-{model_id}.{fmt}"
                    dest = dest / Path(name).name
                partial = dest.with_name(dest.name + ".part")
                with partial.open("wb") as out:
                    for block in response.iter_bytes():
                        out.write(block)
                partial.replace(dest)
        except httpx.HTTPError as exc:
            raise ApiError(f"The download from {self.url} failed ({exc}).") from None
        return dest

    # -- sweeps -------------------------------------------------------------------------

    def sweeps(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        return self.pages("/api/sweeps/", limit)

    def sweep(self, sweep_id: int) -> dict[str, Any]:
        return self.get(f"/api/sweeps/{sweep_id}/")

    def sweep_create(self, **fields: Any) -> dict[str, Any]:
        """name, dataset, mode (grid, random, optuna), space or space_text, base, max_trials,
        max_concurrent, metric, pruner, seed, group, devices, priority."""
        return self.post("/api/sweeps/", fields)

    def sweep_abort(self, sweep_id: int) -> dict[str, Any]:
        return self.post(f"/api/sweeps/{sweep_id}/abort/")

    def sweep_wait(self, sweep_id: int, *, poll: float = 3.0, on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The sweep once it is no longer running."""
        while True:
            data = self.sweep(sweep_id)
            if on_update:
                on_update(data)
            if data["status"] != "running":
                return data
            time.sleep(poll)

    # -- the queue and devices (admins) -------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        return list(self.pages("/api/queue/"))

    def queue_action(self, job_id: int, action: str, priority: str | None = None) -> None:
        self.post(f"/api/queue/{job_id}/", {"action": action, **({"priority": priority} if priority else {})})

    def devices(self) -> list[dict[str, Any]]:
        return list(self.pages("/api/devices/"))

    def device_enable(self, device_id: int, enabled: bool) -> dict[str, Any]:
        return self.patch(f"/api/devices/{device_id}/", {"enabled": enabled})
