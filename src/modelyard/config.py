"""Settings: every knob of a Modelyard process, read from `MODELYARD_*` variables and `.env`."""

from __future__ import annotations

import os
import secrets
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_KEY_BYTES = 32
# Predictions per caller and minute when replicas share Redis and no limit was chosen: 500/s.
SHARED_PREDICT_RATE_LIMIT_PER_MINUTE = 30_000
SECRET_KEY_FILE = "secret_key"  # noqa: S105 - a file name, not a secret

# Values that appear in examples and tutorials; a production key equal to one of them is refused.
PLACEHOLDER_SECRET_KEYS = frozenset(
    {"change-me", "changeme", "secret", "secret-key", "your-secret-key", "modelyard", ""}
)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Settings(BaseSettings):
    """Configuration of one Modelyard process; built once and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
    )

    env: Environment = Environment.DEVELOPMENT
    """`development` (laptop defaults, migrations applied at start) or `production`."""

    data_dir: Path = Path("./data")
    """Folder for the SQLite file, local artifacts and the generated development secret key."""

    database_url: str | None = None
    """SQLAlchemy URL; default SQLite in `data_dir`. `postgresql://` is served by asyncpg."""

    secret_key: SecretStr | None = None
    """Signs tokens and URLs. Development: generated once into `data_dir`. Production: required,
    at least 32 bytes."""

    access_token_expire_minutes: int = Field(default=30, ge=1, le=24 * 60)
    """Lifetime of an access token."""

    refresh_token_expire_days: int = Field(default=7, ge=1, le=365)
    """Lifetime of a refresh token."""

    cors_origins: Annotated[list[str], NoDecode] = []
    """Browser origins allowed to call the API, comma-separated (`*` for any)."""

    # process: role, address, workers (#12, #13)
    role: Literal["all", "api", "serving"] = "all"
    """What this process serves: `all` or `api` (the whole API), or `serving` (predictions, V2,
    health and metrics only; every other route answers 404 and no upload probe runs)."""

    host: str = "127.0.0.1"
    """Address `modelyard serve` listens on (`0.0.0.0` in a container)."""

    port: int = Field(default=8000, ge=1, le=65535)
    """Port `modelyard serve` listens on."""

    workers: int = Field(default=1, ge=1)
    """Worker processes of `modelyard serve`."""

    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest request body accepted outside the upload routes (413 past it)."""

    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """Largest artifact or file upload (413 while streaming past it)."""

    # HTTP edge (#10)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request head (request line and headers) `modelyard serve` reads; past it the
    request answers 431 and the connection is closed, before the rest is buffered."""

    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time a client has to send a whole request head once it has started it (408 past it)."""

    body_timeout_seconds: float = Field(default=30.0, gt=0)
    """Longest a request body may stall (no new bytes while the server waits for them); 408
    past it. A pause, not a total: a slow but steady upload is never cut."""

    idle_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long a connection may stay open without a request: after a response (keep-alive) and
    after connecting."""

    max_concurrency: int = Field(default=1000, ge=1)
    """Connections or requests in flight one worker process takes at once; past it a new request
    answers 503 with `Retry-After` and its connection is closed."""

    forwarded_allow_ips: Annotated[list[str], NoDecode] = []
    """Addresses or networks of the reverse proxies whose `X-Forwarded-For` and
    `X-Forwarded-Proto` are believed, comma-separated (`10.0.0.5,10.1.0.0/16`; `*` trusts every
    peer). Empty: the headers are ignored and the client is the connection's peer."""

    download_links_via_app: bool = False
    """On S3 storage, make download links point at this server, which checks the object's
    sha256, the version and its owner at every download, instead of presigned bucket URLs that
    only the bucket checks (until they expire). Local storage always links through the app."""

    redis_url: str | None = None
    """Redis for shared caches, rate limits and events across replicas; optional."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Threshold of the process log."""

    log_format: Literal["json", "console"] | None = None
    """`json`, one object a line, or `console`, a line of text for people (default: `console`
    in development, `json` in production)."""

    storage_url: str | None = None
    """Artifact store: `s3://bucket/prefix` for an S3-compatible store, or `file:///path` for a
    folder; default the folder `artifacts` in `data_dir`."""

    s3_endpoint_url: str | None = None
    """Endpoint of a non-AWS S3 store such as MinIO (`http://minio:9000`); unset for AWS."""

    s3_region: str = "us-east-1"
    """Region of the S3 bucket."""

    s3_access_key_id: str | None = None
    """S3 access key; unset to use the standard AWS credential chain."""

    s3_secret_access_key: SecretStr | None = None
    """S3 secret key; unset to use the standard AWS credential chain."""

    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    """`path` suits MinIO and most self-hosted stores; `virtual` suits AWS."""

    presign_max_expires_seconds: int = Field(default=7 * 24 * 3600, ge=1, le=7 * 24 * 3600)
    """Longest lifetime a presigned download URL may ask for (S3 allows at most 7 days)."""

    allow_pickle: bool = True
    """Accept pickle and joblib uploads, loaded only through the class allowlist; `false`
    refuses them and leaves only the safe formats (skops, ONNX, XGBoost, LightGBM)."""

    probe_timeout_seconds: float = Field(default=30.0, gt=0)
    """Time a child process gets to load and probe one uploaded model before it is killed."""

    probe_memory_bytes: int = Field(default=2 * 1024**3, ge=64 * 1024**2)
    """Address-space limit of the child process that loads and probes an upload."""

    # upload probes and inference bounds (#10, #12)
    probe_max_concurrent: int = Field(default=4, ge=1)
    """Upload probes one host runs at once (its workers share one probe process); past it an
    upload answers 503 with `Retry-After`. Each probe may take `probe_memory_bytes`: the host's
    probes together take at most this many times that."""

    probe_max_concurrent_per_user: int = Field(default=2, ge=1)
    """Upload probes one user may have running on one host; past it an upload answers 429
    with `Retry-After`."""

    probe_socket: Path | None = None
    """Unix socket of the host's upload probe process, which the server processes of a host
    share (default: `probe.sock` in `data_dir`, or a short path in /tmp when that is too long
    for a socket)."""

    predict_timeout_seconds: float = Field(default=10.0, gt=0)
    """Longest one ONNX inference may run: ONNX Runtime stops it and the request answers 422.
    (scikit-learn, XGBoost and LightGBM cannot be stopped mid-call: their trees are held to
    at most 1,000,000 nodes walked per row at load instead.)"""

    onnx_memory_bytes: int = Field(default=1024**3, ge=16 * 1024**2)
    """Memory the running ONNX inferences of one server process may allocate together (model
    weights not included); a prediction that needs more answers 422."""

    onnx_intra_op_threads: int = Field(default=0, ge=0)
    """Threads one ONNX inference uses (ONNX Runtime's intra-op threads); 0: the cores this
    process may use divided by `workers`, at least 1, so the workers do not oversubscribe the
    cores. (The upload probe and batch jobs use one.)"""

    # ONNX cost budgets (#25): what one call of an uploaded graph may cost, estimated at upload
    onnx_max_flops_per_request: int = Field(default=200 * 10**9, ge=10**6)
    """FLOPs one ONNX call may cost, estimated from the graph at upload and on every load (a
    multiply-add counts 2). A graph over it on one row is refused at upload; otherwise the rows
    of one call are bounded so that it fits (see `max_rows` in a version's `metadata.cost`)."""

    onnx_max_memory_bytes_per_request: int = Field(default=2 * 1024**3, ge=1024**2)
    """Peak memory one ONNX call may need (weights plus the intermediate tensors alive at
    once), estimated like the FLOPs and bounding the same way."""

    onnx_dynamic_dim: int = Field(default=512, ge=1)
    """Size assumed for a dynamic ONNX input dimension other than the rows (a sequence length,
    an image side) when estimating a call's cost; lowered if one row would exceed
    `max_predict_elements`. Rows are bounded by `max_batch_rows` and `max_predict_elements`."""

    model_cache_max_models: int = Field(default=32, ge=1)
    """Loaded model versions kept in memory per process (least recently used evicted first)."""

    model_cache_max_bytes: int = Field(default=2 * 1024**3, ge=1024**2)
    """Memory the loaded models of one process may take, estimated from their artifacts."""

    max_batch_rows: int = Field(default=10_000, ge=1)
    """Most rows one prediction request may carry (422 past it)."""

    batch_max_size: int = Field(default=64, ge=1)
    """Most rows adaptive batching merges into one predict call."""

    batch_max_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    """Extra time a batch may wait for more requests once requests are queued; a lone request
    never waits."""

    prediction_log_payloads: bool = True
    """Keep each prediction's inputs and outputs in the prediction log (`false`: metadata only)."""

    prediction_log_batch_size: int = Field(default=500, ge=1)
    """Rows the background log writer inserts per statement."""

    prediction_log_flush_ms: int = Field(default=500, ge=1)
    """Longest a logged prediction waits in memory before it is written."""

    prediction_log_queue_size: int = Field(default=100_000, ge=1)
    """Predictions held in memory while the database is slow; past it they are spooled to disk."""

    prediction_log_retention_days: int = Field(default=30, ge=0)
    """Days the raw prediction log (inputs, outputs, errors) is kept; 0 keeps it forever.
    PostgreSQL drops whole daily partitions, SQLite deletes in bounded batches."""

    prediction_rollup_retention_days: int = Field(default=400, ge=0)
    """Days the per-minute, per-hour and per-day rollups behind analytics are kept; 0 keeps them forever."""

    prediction_log_partitions_ahead_days: int = Field(default=7, ge=1, le=366)
    """Daily partitions of the prediction log made ahead of time (PostgreSQL)."""

    prediction_log_maintenance_interval_seconds: int = Field(default=3600, ge=0)
    """How often a server process runs the log's upkeep (partitions ahead, retention); one process
    across replicas at a time. 0: never in the server (run `modelyard maintain` instead)."""

    # prediction input and log bounds (#10)
    max_predict_elements: int = Field(default=1_000_000, ge=1)
    """Most input values one prediction request may carry: rows times features, over every V2
    tensor (422 on `/api`, 400 on `/v2` past it). Checked from the declared shapes and lengths
    before any value is read, so a refused request costs no per-value work."""

    prediction_log_max_payload_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest serialised inputs, outputs or error the prediction log stores per prediction; a
    larger payload is stored as `{"truncated": true, "bytes": <size>, "preview": "<its first
    bytes as text>"}` and a longer error is cut, saying how much was left out."""

    traffic_random_seed: int | None = None
    """Seed of the random draws behind traffic splits and shadow sampling (unset: from the
    operating system). For tests and reproducible experiments; every worker draws the same
    sequence when it is set."""

    shadow_max_in_flight: int = Field(default=16, ge=1)
    """Shadow predictions a process runs at once; a sampled copy past it is dropped and counted
    in `modelyard_shadow_predictions_dropped_total`."""

    drift_reference_rows: int = Field(default=500, ge=50, le=100_000)
    """Rows of a version's first successful predictions that become its drift reference when no
    reference file was given; computed the first time drift is asked for once that many exist."""

    drift_window_max_rows: int = Field(default=5_000, ge=50, le=100_000)
    """Most logged input rows (the window's newest) one drift request compares with the
    reference: what bounds its cost, however long the log."""

    # bounded tabular readers and storage quota (#23)
    tabular_max_columns: int = Field(default=10_000, ge=1)
    """Most columns a drift reference file or a batch job's input may have (a CSV header's
    fields, a Parquet schema's columns); a wider file is refused before any row is read."""

    tabular_max_line_chars: int = Field(default=1024 * 1024, ge=1024)
    """Longest line (a row, with any line breaks inside quoted values) of a CSV drift reference
    or batch job input, in characters; a longer one is refused as it is read."""

    drift_reference_max_rows: int = Field(default=1_000_000, ge=1)
    """Most data rows a drift reference file may have (a Parquet file's are counted from its
    metadata, before any row is read); past it the reference is refused with 422."""

    batch_job_max_rows: int = Field(default=10_000_000, ge=1)
    """Most data rows a batch job's input may have (Parquet: from its metadata, before any row
    is scored); past it the job fails."""

    storage_quota_bytes: int = Field(default=10 * 1024**3, ge=0)
    """Bytes each account may keep in its file area, batch job outputs included (model
    artifacts are not counted); an upload or job output past it is refused with 403
    `storage-quota-exceeded`. 0: no quota."""

    predict_rate_limit_per_minute: int = Field(default=0, ge=0)
    """Prediction requests per caller (API key, else user) and minute, native and V2 together,
    counted by every replica through Redis (0: no limit). Unset: 30,000 when `redis_url` is set
    (a shared service protects itself from one runaway caller), else no limit."""

    outage_cache_seconds: float = Field(default=60.0, ge=0)
    """How long a successful authentication or version resolution may still answer while the
    database cannot be reached (0: never). Never used while the database answers."""

    # batch prediction jobs (#18)
    batch_job_chunk_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    """Input rows a batch job reads, scores and stores at a time, fewer where one prediction
    request may carry less: a chunk holds at most `max_batch_rows` rows and
    `max_predict_elements` values (rows times features; a job whose rows are each wider fails).
    Its memory is bounded by one chunk, and a resumed job starts again after the last chunk it
    stored."""

    batch_job_lease_seconds: float = Field(default=30.0, gt=0)
    """How long a running batch job stays its worker's without a sign of life; the worker renews
    it every third of this. A job whose worker died is taken over once its lease has run out."""

    batch_job_poll_seconds: float = Field(default=1.0, gt=0)
    """How often a worker looks for batch jobs to start or to take over (the in-process worker
    of a server without Redis, and the takeover check of `modelyard worker`)."""

    batch_job_concurrency: int = Field(default=2, ge=1)
    """Batch jobs one `modelyard worker` process runs at once (a server without Redis runs one
    at a time in each of its processes)."""

    batch_job_queue: str = Field(default="modelyard-batch-jobs", min_length=1, max_length=100)
    """Name of the Redis queue batch jobs go through when `redis_url` is set."""

    # batch jobs: fairness between accounts (#23)
    batch_job_max_active_per_account: int = Field(default=20, ge=1)
    """Queued and running batch jobs one account may have at once; creating one more answers
    429 with `Retry-After` until one of them ends."""

    batch_job_max_running_per_account: int = Field(default=2, ge=1)
    """Batch jobs of one account that run at once, over every worker and replica; its other
    jobs wait, and a free worker takes another account's job first (the account with the fewest
    running, then the one served least recently)."""

    worker_heartbeat_file: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "modelyard-worker.heartbeat"
    )
    """File a `modelyard worker` touches every 10 s while its event loop runs: the container
    health check (`modelyard-healthcheck worker`) reads its age. Keep it per container (/tmp)."""

    metrics_token: SecretStr | None = None
    """Bearer token a Prometheus scraper may use for `/metrics` (admins may always read it)."""

    auth_rate_limit_per_minute: int = Field(default=20, ge=0)
    """Register, login and refresh attempts per client address and minute, shared by the
    host's workers (by every replica with Redis) (0: no limit)."""

    # credentials and password guessing (#10)
    password_failures_per_account: int = Field(default=10, ge=0)
    """Failed password checks per account and window, login and `current_password` alike,
    counted for unknown emails too (0: no limit). Past it: 429 with `Retry-After`."""

    password_failure_window_seconds: int = Field(default=900, ge=1)
    """The window of `password_failures_per_account`, in seconds."""

    # live event streams (#23)
    live_events_streams_per_account: int = Field(default=10, ge=0)
    """Event streams (`GET /api/v1/events`, the dashboard's live notices) one account may have
    open at once in each server process (each worker counts its own); past it 429 with
    `Retry-After` (0: no limit)."""

    # webhooks (#17)
    webhook_allow_private_networks: bool = False
    """Let webhooks reach loopback, private, link-local, cloud-metadata and other non-public
    addresses (tests, receivers on the same network). Off: a URL naming such an address is
    refused when the webhook is made, and a delivery whose host resolves to one is not sent."""

    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Longest one webhook delivery attempt may take, from resolving the host to the end of
    the response (of which at most 64 KiB are read); past it the attempt failed."""

    webhook_delivery: bool = True
    """Send the queued webhook deliveries from this process (a background worker; replicas and
    workers never send one delivery twice). `false` leaves them to other processes."""

    # webhooks: limits per account, fair delivery, retention (#23)
    webhook_max_per_account: int = Field(default=25, ge=0)
    """Webhooks one account may have (0: no limit). Past it, making one more answers 403
    `webhook-limit` until one is deleted."""

    webhook_account_concurrency: int = Field(default=4, ge=1)
    """Deliveries of one account attempted at once, by every process and replica together: a
    receiver that never answers holds up its own account's deliveries only."""

    webhook_concurrency: int = Field(default=20, ge=1)
    """Deliveries one process attempts at once (every account together)."""

    webhook_delivery_retention_days: int = Field(default=30, ge=0)
    """Days a finished (delivered or failed) delivery stays in the delivery log after its last
    attempt (0: forever); the delivery workers delete older ones hourly, in small batches."""

    # single sign-on with OpenID Connect (#27)
    oidc_issuer: str | None = None
    """Issuer URL of an OpenID provider (`https://keycloak.example.com/realms/acme`,
    `https://accounts.google.com`): turns on "Sign in with ..." on the dashboard and
    `modelyard login --sso`. Its `/.well-known/openid-configuration` is read on first use."""

    oidc_client_id: str | None = None
    """This server's client id at the provider (the ID token's audience must be it)."""

    oidc_client_secret: SecretStr | None = None
    """This server's client secret at the provider (a confidential client: the secret stays on
    the server; the command line signs in through the server)."""

    oidc_scopes: str = "openid email profile"
    """Scopes asked for, space-separated; `openid` and `email` are added when missing."""

    oidc_display_name: str = Field(default="single sign-on", min_length=1, max_length=60)
    """Name of the provider on the sign-in page: "Sign in with <name>"."""

    oidc_groups_claim: str | None = "groups"
    """ID token claim holding the person's groups, stored with their identity at each sign-in
    (mapping groups to team roles comes with teams, #27)."""

    oidc_link_verified_email: bool = False
    """Let a first SSO sign-in take over the existing local account with the same email, when
    the provider says that email is verified. Off: such a sign-in is refused, so that whoever
    controls an account at the provider cannot take over a local account with that email."""

    local_passwords: bool = True
    """Allow email and password registration and sign-in. `false` (needs `oidc_issuer`): only
    single sign-on; registering or logging in with a password answers 403 `passwords-disabled`
    (API keys and `modelyard create-admin` keep working)."""

    argon2_time_cost: int = Field(default=3, ge=1)
    """Argon2id passes for password hashes."""

    argon2_memory_kib: int = Field(default=65536, ge=8)
    """Argon2id memory per password hash, in KiB."""

    argon2_parallelism: int = Field(default=4, ge=1)
    """Argon2id lanes per password hash."""

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, data: object) -> object:
        if isinstance(data, dict):
            for name in ("cors_origins", "forwarded_allow_ips"):
                if isinstance(data.get(name), str):
                    data[name] = [o.strip() for o in data[name].split(",") if o.strip()]
        return data

    @model_validator(mode="after")
    def _shared_service_limits(self) -> Self:
        if "predict_rate_limit_per_minute" not in self.model_fields_set and self.redis_url:
            self.predict_rate_limit_per_minute = SHARED_PREDICT_RATE_LIMIT_PER_MINUTE
        return self

    @model_validator(mode="after")
    def _check_sso(self) -> Self:
        if self.oidc_issuer:
            if not (self.oidc_client_id and self.oidc_client_secret):
                raise ValueError(
                    "MODELYARD_OIDC_ISSUER needs MODELYARD_OIDC_CLIENT_ID and "
                    "MODELYARD_OIDC_CLIENT_SECRET"
                )
            if self.env is Environment.PRODUCTION and not self.oidc_issuer.startswith("https://"):
                raise ValueError("MODELYARD_OIDC_ISSUER must be an https:// URL in production")
        elif not self.local_passwords:
            raise ValueError(
                "MODELYARD_LOCAL_PASSWORDS=false needs MODELYARD_OIDC_ISSUER: nobody could sign in"
            )
        return self

    @property
    def sso_enabled(self) -> bool:
        return bool(self.oidc_issuer)

    @model_validator(mode="after")
    def _resolve_secret_key(self) -> Self:
        key = self.secret_key.get_secret_value() if self.secret_key else None
        if self.env is Environment.PRODUCTION:
            if key is None:
                raise ValueError("MODELYARD_SECRET_KEY is required in production")
            if key.strip().lower() in PLACEHOLDER_SECRET_KEYS:
                raise ValueError("MODELYARD_SECRET_KEY is a placeholder; generate a random one")
            if len(key.encode()) < MIN_SECRET_KEY_BYTES:
                raise ValueError(
                    f"MODELYARD_SECRET_KEY must be at least {MIN_SECRET_KEY_BYTES} bytes"
                )
        elif key is None:
            self.secret_key = SecretStr(_development_secret_key(self.data_dir))
        return self

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def local_url(self) -> str:
        """Where a browser on this host reaches `modelyard serve` (any address: 127.0.0.1)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host  # noqa: S104
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def log_lines(self) -> Literal["json", "console"]:
        """`log_format`, or what suits the environment when it is not set."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.is_production else "console"

    @property
    def sqlalchemy_url(self) -> str:
        """Return the async driver URL for `database_url` (or the default SQLite file)."""
        if not self.database_url:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'modelyard.db').resolve()}"
        url = self.database_url
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url.removeprefix(plain)
        return url

    @property
    def secret(self) -> str:
        """Return the signing key (always set after validation)."""
        assert self.secret_key is not None  # noqa: S101 - guaranteed by _resolve_secret_key
        return self.secret_key.get_secret_value()


def _development_secret_key(data_dir: Path) -> str:
    """Read the development key from `data_dir`, creating it (mode 0600) on first use."""
    path = data_dir / SECRET_KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # Written aside, then linked into place: link fails if the name exists, so when two
    # processes start together both end up with the one key that won, never a partial file.
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".secret_key.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key)
        os.link(tmp, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        os.unlink(tmp)
    return key
