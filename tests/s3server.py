"""A real S3 endpoint for tests: moto's standalone server (it speaks the S3 protocol over
HTTP) in a process of its own, with authentication on: requests must be signed with an
access key it issued, so a wrong key or secret is refused as AWS would refuse it.

    server = S3Server().start()
    server.endpoint, server.access_key_id, server.secret_access_key
    server.client().create_bucket(Bucket="images")
    server.stop()
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

# Unsigned requests moto accepts before it checks signatures: the three that issue the key.
SETUP_REQUESTS = 3
ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.access_key_id = self.secret_access_key = ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        iam = self._client("iam", "setup", "setup")
        iam.create_user(UserName="digits-test")
        key = iam.create_access_key(UserName="digits-test")["AccessKey"]
        iam.put_user_policy(UserName="digits-test", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def _client(self, service: str, key: str, secret: str, endpoint: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=endpoint or self.endpoint, aws_access_key_id=key,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def client(self, endpoint: str | None = None) -> Any:
        return self._client("s3", self.access_key_id, self.secret_access_key, endpoint)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
