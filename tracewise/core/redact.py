"""Keep secrets out of logs and saved configs.

API keys enter tracewise only through environment variables named in configs (``api_key_env``).
Whoever reads such a variable registers its value here; from then on every log record is scrubbed
of it when created (a record factory, so it works whatever handlers tests or users attach), and
``safe_config_yaml`` scrubs it, URL credentials and any secret-looking config keys from the
``config.yaml`` a stage saves into its run directory.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
_SECRETS: set[str] = set()
_SHORT: set[re.Pattern] = set()  # 4-5 character secrets, masked as whole words
_LOCK = threading.Lock()
_installed = False

# Config keys whose *values* are secrets. ``*_env`` keys name a variable and are kept.
_SECRET_KEY = re.compile(r"(api_?key|secret|password|passwd|token|bearer|authorization|credentials?)$", re.I)
# Linear time: a scheme may only start where no scheme character precedes it, so a long run like
# "a.a.a.…" is scanned once, not once per position (that was quadratic: 34 s on "a." * 50000).
_URL_CREDS = re.compile(r"(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", re.I)
_BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]{4,}", re.I)
# Query parameters (name bounded, so no backtracking blow-up); the name decides whether the value is masked.
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;\s?]{1,64})=([^&#;\s]+)")
_SECRET_PARAM = re.compile(r"key|token|secret|passw|auth|sig|credential|session", re.I)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_MASKED = 4  # shorter values cannot be masked without mangling ordinary text
# Prefixes of real provider keys: a value like this in an ``*_env`` field is a pasted key, not a name.
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "gsk_", "xai-", "pk-", "rk-")


def register_secret(value: str | None) -> bool:
    """Scrub ``value`` from every log record and saved config from now on. Values of 6+ characters
    are masked wherever they occur; 4-5 characters only as a whole word (masking every "abcd" inside
    other words would mangle ordinary text); shorter ones cannot be masked: returns False for them
    (callers warn, or refuse such a key)."""
    if not value:
        return False
    if len(value) < MIN_MASKED:
        return False
    with _LOCK:
        if len(value) >= 6:
            _SECRETS.add(value)
        else:
            _SHORT.add(re.compile(r"(?<![A-Za-z0-9_-])" + re.escape(value) + r"(?![A-Za-z0-9_-])"))
    _install_record_factory()
    return True


def redact(text: str) -> str:
    """``text`` with registered secrets, ``Bearer`` tokens, ``user:pass@`` URL credentials and the values
    of secret-named query parameters (``?api_key=…``, ``&token=…``) masked."""
    if not isinstance(text, str) or not text:
        return text
    for s in sorted(_SECRETS, key=len, reverse=True):  # longest first: one secret may contain another
        if s in text:
            text = text.replace(s, MASK)
    for pattern in list(_SHORT):
        text = pattern.sub(MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _URL_CREDS.sub(lambda m: m.group(1) + MASK + "@", text)
    if "=" in text:
        text = _QUERY_PARAM.sub(_mask_param, text)
    return text


def _mask_param(m: re.Match) -> str:
    if _SECRET_PARAM.search(m.group(2)):
        return f"{m.group(1)}{m.group(2)}={MASK}"
    return m.group(0)


def redact_obj(obj: Any, key: str = "") -> Any:
    """Recursively redact a config-like structure (dicts, lists, strings)."""
    if isinstance(obj, dict):
        return {k: redact_obj(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, key) for v in obj]
    if isinstance(obj, str):
        if obj and _SECRET_KEY.search(key) and not key.lower().endswith("_env"):
            return MASK
        return redact(obj)
    return obj


def safe_config_yaml(cfg: Any) -> str:
    """The YAML of a config dataclass with secrets masked (what ``store.save_config`` writes)."""
    import yaml

    from tracewise.core.config import to_dict

    return yaml.safe_dump(redact_obj(to_dict(cfg)), sort_keys=False)


def check_env_name(value: str, field: str) -> None:
    """Reject an ``*_env`` field that holds something other than an environment variable's name
    (most often the key itself, pasted where its variable's name belongs)."""
    if not value:
        return
    if value.startswith(_KEY_PREFIXES) or not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"{field}: expected the NAME of an environment variable (e.g. OPENAI_API_KEY), got a value that "
            "is not a variable name; never put the key itself in a config, export it and name the variable"
        )


def _install_record_factory() -> None:
    """Wrap the log record factory once so every record's final message is scrubbed at creation."""
    global _installed
    with _LOCK:
        if _installed:
            return
        _installed = True
        previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _SECRETS or _SHORT:
            try:
                message = record.getMessage()
            except Exception:  # a malformed log call: leave it for logging to report
                return record
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(factory)
