"""Credentials never leave iosweep: one masking function, mask_text(), at every exit.

Two rules, applied together:
- by key: the value of a credential-like key (password, db_pass, +auth, api_key, secret_key,
  session_token, ...) in `key=value` text (overrides, error lines, URLs) and `key: value` YAML lines;
  every element of a swept value (`key=a,b`) and quoted values with commas too;
- by value: every value iosweep learnt is a credential (remember_overrides / remember_config /
  remember_params: secret keys on the command line, in the composed config, and values that reach
  a harmless key by interpolation, `trial=${password}` or `${oc.env:DB_TOKEN}`) is replaced
  wherever it appears, whatever key it sits under.

The exits: the terminal (guard_terminal wraps stdout/stderr, so Hydra's own lines and logging are
masked too), MLflow params, tags, run names and text artifacts (tracking.log_run), the sweep's
summary files, reproduce's output. The run dir's own files (.hydra/*.yaml, config.yaml,
result.json) stay as written: they are the user's local record, and reproduce needs them raw.

MASK is a plain word: YAML reads it back as a string (not an alias, as `***` was) and Hydra's
override grammar accepts it, so a masked config still loads; runner.reproduce asks for the real
value again (masked_keys). Everything here is linear in the text's length.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import sys

MASK = "MASKED"
PLACEHOLDER = "..."  # `--set KEY=...` in iosweep's own advice stays as written
LEGACY_MASKS = ("***",)  # what iosweep wrote before: still recognised as masked by reproduce
MIN_VALUE_LEN = 3  # shorter values are masked by key only: masking every "1" would garble the output
_NOT_SECRET_VALUES = {"true", "false", "null", "none", "yes", "no", MASK.lower(), *LEGACY_MASKS}

# words of a key (split at _ - . and camelCase) that make it a credential
_SECRET_WORDS = {"pass", "passwd", "password", "passwords", "pwd", "passphrase", "secret", "secrets", "token",
                 "tokens", "auth", "authorization", "credential", "credentials", "cred", "creds", "apikey",
                 "privkey", "accesskey", "secretkey", "sessiontoken"}
# ...or inside a word: dbpassword, authtoken, xsecret
_SECRET_PARTS = ("password", "passwd", "passphrase", "secret", "token", "credential", "apikey", "accesskey",
                 "privatekey")
# ...or a pair of words: access_key, api_key, private_key, session_token, signing_key
_SECRET_PAIRS = {("access", "key"), ("api", "key"), ("private", "key"), ("secret", "key"), ("session", "key"),
                 ("session", "token"), ("signing", "key"), ("encryption", "key"), ("client", "secret")}
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

# `key=` in free text; the lookbehind makes a match start only where a key can start, so each run
# of key characters is scanned once (the old pattern backtracked: quadratic on a 30 KB value)
_KEY_EQ = re.compile(r"(?<![\w.\-+~])[+~]{0,2}[A-Za-z_][\w.\-]*=(?!=)")
_VALUE = re.compile(r"(?:'[^'\n]*'?|\"[^\"\n]*\"?|[^\s'\"]+)+")  # up to whitespace; quoted parts may hold spaces
_NEXT_KEY = re.compile(r",(?=[+~]{0,2}[A-Za-z_][\w.\-]*=)")  # `a=1,b=2` (Hydra's override_dirname)
_YAML = re.compile(r"^(?P<lead>[ \t]*(?:-[ \t]+)?[\"']?)(?P<key>[+~]{0,2}[\w.\-]+)(?P<close>[\"']?:[ \t]+)"
                   r"(?P<value>\S[^\n]*)$", re.MULTILINE)
_INTERPOLATION = re.compile(r"\$\\?\{([^{}]*)\}")  # also as Hydra escapes it in a job's overrides: $\{...\}

_known: set[str] = set()  # credential values learnt in this process
_known_re: re.Pattern | None = None


@functools.lru_cache(maxsize=4096)
def is_secret(key: str) -> bool:
    """Whether a (dotted, +/~ prefixed) config key or env var name names a credential."""
    last = str(key).lstrip("+~").rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    words = [w.lower() for w in _WORD.findall(last)]
    if any(w in _SECRET_WORDS or any(p in w for p in _SECRET_PARTS) for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def _mentions_secret(text: str) -> bool:
    """`${password}`, `${target.api_key}`, `${oc.env:DB_TOKEN}`: an interpolation that reads a credential."""
    return any(is_secret(name) for inner in _INTERPOLATION.findall(text)
               for name in re.split(r"[\s:,()\\]+", inner) if name)


# ---- learning the values -------------------------------------------------------------------

def remember(value) -> None:
    """Mask this value wherever it appears from now on (with the escapes YAML, JSON and CSV give it)."""
    global _known_re
    text = str(value)
    if len(text) < MIN_VALUE_LEN or text.lower() in _NOT_SECRET_VALUES or "${" in text:
        return  # an interpolation is a reference, not the secret: its resolved value is remembered
    variants = {text, text.replace("'", "''"), text.replace('"', '""'), json.dumps(text)[1:-1]}
    if variants <= _known:
        return
    _known.update(variants)
    # longest first: a secret that contains another is masked whole
    _known_re = re.compile("|".join(re.escape(v) for v in sorted(_known, key=len, reverse=True)))


def forget_all() -> None:
    """For tests: start with no remembered values."""
    global _known_re
    _known.clear()
    _known_re = None


def split_elements(value: str) -> list[str]:
    """A swept value's elements, split at commas outside quotes and brackets: `a,'b,c'` -> a, 'b,c'."""
    out, start, depth, quote = [], 0, 0, ""
    for i, ch in enumerate(value):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(value[start:i])
            start = i + 1
    out.append(value[start:])
    return out


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _elements(value: str) -> list[str]:
    """The values a command-line value stands for: each swept element, unquoted (`a,'b,c'` -> a
    and b,c), also inside choice(...)/range(...)/[...], and an element's value after `name=`."""
    inner = re.fullmatch(r"\s*\w*\s*[(\[{](.*)[)\]}]\s*", value, re.DOTALL)
    parts = [_unquote(p) for p in split_elements(inner.group(1) if inner else value)]
    return parts + [_unquote(p.split("=", 1)[1]) for p in parts if "=" in p]


def secret_override_keys(overrides) -> set[str]:
    """Keys (without +/~) whose value is a credential: a credential-like key, or a value that
    interpolates one (`trial=${password}`)."""
    keys = set()
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep and (is_secret(key) or _mentions_secret(value)):
            keys.add(key.lstrip("+~"))
    return keys


def remember_elements(value: str) -> None:
    """A command-line value that is a credential, and each of its swept elements."""
    for v in _elements(value):
        remember(v)


def remember_overrides(overrides) -> None:
    """Learn the credentials given on a command line (`+db_pass=x`, `-m target.password=a,b`)."""
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep and is_secret(key):
            remember_elements(value)


def remember_params(params: dict, overrides=()) -> None:
    """Learn the credentials in a flat, resolved key -> value mapping (a run's params): those under
    credential-like keys, and those that reached a key through an interpolation in overrides."""
    by_interpolation = secret_override_keys(overrides)
    for key, value in params.items():
        if is_secret(key) or key in by_interpolation:
            remember(value)


def remember_config(cfg) -> None:
    """Learn the credentials of a composed config: values under credential-like keys, and values
    that an interpolation brought from one (`trial: ${password}`, `${oc.env:DB_TOKEN}`)."""
    from omegaconf import OmegaConf

    def walk(node, prefix=""):
        raw = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
        items = raw.items() if isinstance(raw, dict) else enumerate(raw)
        for k, v in items:
            key = f"{prefix}{k}"
            if isinstance(v, (dict, list)):
                walk(v, key + ".")
            elif is_secret(str(k)) or isinstance(v, str) and _mentions_secret(v):
                try:
                    value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
                except Exception:  # a key OmegaConf cannot address (a list index): key rule only
                    value = v
                remember(value)
                if isinstance(v, str):
                    remember(v)

    try:
        walk(cfg)
    except Exception:  # masking must never stop a run: the key rule still applies
        pass


# ---- masking -------------------------------------------------------------------------------

def _mask_value(value: str) -> str:
    """A masked value with the shape of the original: every swept element masked."""
    if not value or value in (MASK, PLACEHOLDER):
        return value
    if value[0] in "[{(" or re.match(r"\w+\(", value):
        return MASK
    if not any(q in value for q in "'\"([{"):  # the common case, without a walk over every character
        return ",".join([MASK] * (value.count(",") + 1))
    return ",".join(MASK for _ in split_elements(value))


def _mask_key_values(text: str) -> str:
    out, pos = [], 0
    for m in _KEY_EQ.finditer(text):
        if m.start() < pos or not is_secret(m.group()[:-1]):
            continue
        start = m.end()
        before = text[m.start() - 1] if m.start() else ""
        if before and before in "'\"":  # 'key=value' inside quotes: the value ends at the closing quote
            ends = [i for i in (text.find(before, start), text.find("\n", start)) if i >= 0]
            end = min(ends, default=len(text))
        else:
            v = _VALUE.match(text, start)
            end = v.end() if v else start
            nxt = _NEXT_KEY.search(text, start, end)
            if nxt:
                end = nxt.start()
        out += [text[pos:start], _mask_value(text[start:end])]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def mask_text(text) -> str:
    """Every credential in text masked: remembered values wherever they are, then the values of
    credential-like keys in `key=value` and `key: value` form. Linear in len(text)."""
    text = str(text)
    if _known_re is not None:
        text = _known_re.sub(MASK, text)
    if "=" in text:
        text = _mask_key_values(text)
    if ":" in text:
        text = _YAML.sub(lambda m: f"{m['lead']}{m['key']}{m['close']}{MASK}" if is_secret(m["key"]) else m[0],
                         text)
    return text


def mask_value(key: str, value) -> str:
    """One value under its key: the mask for a credential-like key, else value with credentials masked."""
    return MASK if is_secret(key) and str(value) else mask_text(value)


def mask_mapping(d: dict) -> dict:
    """Flat key -> value mapping (params) with credentials masked."""
    return {k: mask_value(k, v) for k, v in d.items()}


def mask_nested(value):
    if isinstance(value, dict):
        return {k: (MASK if is_secret(str(k)) and not isinstance(v, (dict, list)) else mask_nested(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_nested(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def mask_file_text(name: str, text: str) -> str:
    if name.endswith(".json"):
        try:
            return json.dumps(mask_nested(json.loads(text)), indent=1)
        except ValueError:
            pass
    return mask_text(text)


def is_masked(value: str) -> bool:
    """A saved value (or every element of a swept one) that was masked when logged."""
    value = _unquote(str(value))
    return value in (MASK, *LEGACY_MASKS) or bool(value) and all(
        _unquote(e) in (MASK, *LEGACY_MASKS) for e in split_elements(value))


def masked_keys(overrides) -> list[str]:
    """The keys whose value in these saved overrides is a mask, as written (`+db_pass`)."""
    return [key for key, sep, value in (str(o).partition("=") for o in overrides) if sep and is_masked(value)]


def readable_yaml(text: str) -> str:
    """YAML that iosweep masked with `***` before (an alias to YAML): the legacy mask as a string."""
    return re.sub(r"^([ \t]*(?:-[ \t]+)?[\w.\-+~]+:[ \t]+)\*\*\*[ \t]*$", rf"\g<1>{MASK}", text, flags=re.MULTILINE)


# ---- the terminal --------------------------------------------------------------------------

class MaskingStream:
    """A text stream that masks what is written to it, a line at a time (a credential split over
    two write() calls of one print() is still whole when masked)."""

    def __init__(self, stream):
        self._stream = stream
        self._pending = ""

    def write(self, s: str) -> int:
        self._pending += s
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
        if cut:
            done, self._pending = self._pending[:cut], self._pending[cut:]
            self._stream.write(mask_text(done))
        return len(s)

    def flush(self) -> None:
        if self._pending:
            done, self._pending = self._pending, ""
            self._stream.write(mask_text(done))
        self._stream.flush()

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):  # isatty, fileno, encoding, buffer...
        return getattr(self._stream, name)


def guard_terminal() -> None:
    """Mask everything this process prints: its own lines, Hydra's errors and logging, warnings."""
    if not isinstance(sys.stdout, MaskingStream):
        sys.stdout = MaskingStream(sys.stdout)
    if not isinstance(sys.stderr, MaskingStream):
        sys.stderr = MaskingStream(sys.stderr)


class MaskFilter(logging.Filter):
    """For loggers that echo overrides (Hydra's launcher prints every job's overrides)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = ()
        return True
