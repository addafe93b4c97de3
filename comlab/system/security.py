"""CurveZMQ for comlab: encryption plus key-based authentication of every peer.

A keys directory (``comlab keys DIR``) holds one deployment and is copied, in part, to each host:

* ``server.key`` / ``server.key_secret``: the deployment keypair. Every socket that *binds* in
  comlab (the server's PULL and ROUTER, the client's PULL) is a CURVE server with this key, and
  every connecting socket checks it (``curve_serverkey``), so a peer talks only to the deployment.
* ``client.key*``, ``worker.key*``: one keypair per role, used as the CURVE client key of that
  role's connecting sockets (the server's own connecting sockets use the server keypair).
* ``authorized/``: the public keys a binding socket accepts. Authentication is ZAP, pyzmq's
  ``ThreadAuthenticator`` with ``configure_curve(domain="*", location=DIR/authorized)``, started
  in a process the first time it makes a CURVE server socket (``Role.socket``) and stopped before
  its context terminates. A peer whose public key is not there is refused during the handshake:
  it sends nothing and receives nothing.

What each host needs: the server host everything but ``client.key_secret`` / ``worker.key_secret``;
a worker host ``server.key``, ``worker.key``, ``worker.key_secret`` (it binds nothing); a client
host ``server.key``, ``server.key_secret`` (its result socket binds as a CURVE server),
``client.key``, ``client.key_secret`` and ``authorized/``. Remove a public key from
``authorized/`` (and restart) to shut a role out. Without keys nothing changes: plain TCP.

``Curve`` is a small picklable dataclass of key bytes, so the server hands it to its worker
processes; the authenticator thread is per process and never pickled.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import zmq

ROLES = ("server", "client", "worker")
AUTHORIZED = "authorized"


@dataclass
class Curve:
    public: bytes                     # this role's keypair: the CURVE client key
    secret: bytes
    server_public: bytes              # the deployment key every connecting socket checks
    server_secret: bytes | None = None  # needed only by roles that bind (server, client)
    authorized: str | None = None     # directory of accepted public keys (binding roles)
    _auth: object = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_auth"] = None  # a thread: stays in its process
        return state

    @classmethod
    def load(cls, directory, role: str) -> "Curve":
        """The keys ``role`` (server, client, worker) uses, from a ``comlab keys`` directory."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
        d = Path(directory)
        server_public, server_secret = _read(d / "server.key_secret" if role != "worker"
                                             else d / "server.key", need_secret=role != "worker")
        public, secret = _read(d / f"{role}.key_secret", need_secret=True)
        authorized = None
        if role != "worker":
            authorized = d / AUTHORIZED
            if not authorized.is_dir():
                raise OSError(f"no {authorized} directory: nothing would be accepted")
            authorized = str(authorized)
        return cls(public, secret, server_public, server_secret, authorized)

    def apply(self, sock: zmq.Socket, server: bool) -> None:
        """Make ``sock`` a CURVE server (binding sockets) or client (connecting ones)."""
        if server:
            if self.server_secret is None:
                raise ValueError("these keys have no server secret: this role cannot bind")
            sock.curve_secretkey = self.server_secret
            sock.curve_publickey = self.server_public
            sock.curve_server = True
        else:
            sock.curve_secretkey = self.secret
            sock.curve_publickey = self.public
            sock.curve_serverkey = self.server_public

    # -- ZAP, one authenticator thread per process (per context) --------------------------
    def ensure_auth(self, ctx: zmq.Context) -> None:
        """Start the ZAP handler in ``ctx`` unless it runs already (before any bind)."""
        auth = self._auth
        if auth is not None and auth.context is ctx and auth.is_alive():
            return
        self.stop_auth()
        if self.authorized is None:
            raise ValueError("these keys have no authorized directory: this role cannot bind")
        from zmq.auth.thread import ThreadAuthenticator
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=self.authorized)
        self._auth = auth

    def stop_auth(self) -> None:
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()


def _read(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth
    if not path.is_file():
        raise OSError(f"missing key file {path} (create keys with: comlab keys DIR)")
    public, secret = zmq.auth.load_certificate(path)
    if need_secret and not secret:
        raise OSError(f"{path} holds no secret key")
    return public, secret


def create_keys(directory, force: bool = False) -> list[Path]:
    """Write a deployment's keypairs (server, client, worker) and ``authorized/`` with their
    public keys; refuse to overwrite existing keys unless ``force``. Returns the files written."""
    import zmq.auth
    d = Path(directory)
    existing = [d / f"{r}.key_secret" for r in ROLES if (d / f"{r}.key_secret").exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists (use --force to replace every key)")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    auth = d / AUTHORIZED
    if auth.exists() and force:
        shutil.rmtree(auth)
    auth.mkdir(exist_ok=True)
    written = []
    for role in ROLES:
        public, secret = zmq.auth.create_certificates(d, role)
        os.chmod(secret, 0o600)
        shutil.copy(public, auth / f"{role}.key")
        written += [Path(public), Path(secret), auth / f"{role}.key"]
    return written
