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
``client.key``, ``client.key_secret`` and ``authorized/``. Without keys nothing changes: plain
TCP, which a server accepts on a worker endpoint other hosts can reach (``is_local_url`` false)
only when told ``--insecure``.

Per-host worker keys (``create_host_keys``, ``comlab keys DIR --host NAME``; the lab makes one per
host): ``worker-NAME.key*``, its public key in ``authorized/``, so one host's key is not every
host's. A key is withdrawn by removing its file from ``authorized/``: a server re-reads the
directory once a second (``Curve.reload``) and refuses that key from its next connection on.

``Curve`` is a small picklable dataclass of key bytes, so the server hands it to its worker
processes; the authenticator thread is per process and never pickled.
"""

from __future__ import annotations

import ipaddress
import os
import re
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
    _seen: object = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_auth"] = None  # a thread: stays in its process
        return state

    @classmethod
    def load(cls, directory, role: str, host: str | None = None) -> "Curve":
        """The keys ``role`` (server, client, worker) uses, from a ``comlab keys`` directory;
        a worker with ``host``: that host's own keypair (``create_host_keys``)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
        d = Path(directory)
        server_public, server_secret = _read(d / "server.key_secret" if role != "worker"
                                             else d / "server.key", need_secret=role != "worker")
        own = f"worker-{host_key_name(host)}" if host and role == "worker" else role
        public, secret = _read(d / f"{own}.key_secret", need_secret=True)
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
        self._seen = _listing(self.authorized)
        auth.configure_curve(domain="*", location=self.authorized)
        self._auth = auth

    def reload(self) -> bool:
        """Re-read the authorized keys if the directory changed (a key added or withdrawn);
        True if it did. Connections made before keep going; new ones see the new list."""
        if self._auth is None or self.authorized is None:
            return False
        seen = _listing(self.authorized)
        if seen == self._seen:
            return False
        self._seen = seen
        self._auth.configure_curve(domain="*", location=self.authorized)
        return True

    def stop_auth(self) -> None:
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()


def _listing(directory) -> tuple:
    """What the authorized directory holds: (name, size, mtime) per file."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                            for e in os.scandir(directory) if e.is_file()))
    except OSError:
        return ()


def is_local_url(url: str) -> bool:
    """Whether only this host can reach ``url``: ipc, inproc, or tcp on a loopback address."""
    scheme, _, rest = url.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rpartition(":")[0].strip("[]")
    if scheme != "tcp" or not host:
        return False
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_key_name(name: str) -> str:
    """A host name as it appears in its key files' names."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]


def create_host_keys(directory, name: str) -> dict:
    """A worker keypair of its own for host ``name`` in a ``comlab keys`` directory
    (``worker-NAME.key*``, public key in ``authorized/``); the keys as a worker host reads them
    on stdin (z85 text). Remove ``authorized/worker-NAME.key`` to withdraw it."""
    import zmq.auth
    d = Path(directory)
    safe = host_key_name(name)
    public, secret = zmq.auth.create_certificates(d, f"worker-{safe}")
    os.chmod(secret, 0o600)
    shutil.copy(public, d / AUTHORIZED / f"worker-{safe}.key")
    pub, sec = zmq.auth.load_certificate(secret)
    server_public, _ = zmq.auth.load_certificate(d / "server.key")
    return {"public": pub.decode(), "secret": sec.decode(),
            "server_public": server_public.decode()}


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
