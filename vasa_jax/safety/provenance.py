"""Signed C2PA provenance manifests that declare generated mp4 files AI-generated.

``sign_mp4`` embeds a C2PA manifest whose ``c2pa.actions`` assertion records a ``c2pa.created``
action with the IPTC digital source type ``trainedAlgorithmicMedia``, plus an optional
``org.vasa_jax.generation`` assertion with facts about the generation (model, seed, watermark).
``read_manifest`` verifies a file and summarises what it finds in a ``ProvenanceReport``.

Signing needs a certificate chain. Without one, ``ensure_dev_certificate`` makes a LOCAL
DEVELOPMENT chain (an ECDSA P-256 root CA and a signing certificate it issued) in
``~/.config/vasa_jax/c2pa/`` (or ``$VASA_JAX_C2PA_DIR``). It proves only that the file was not
altered since this machine signed it; it names nobody that a third party has vetted. For
published media, sign with a certificate from a CA via ``SigningIdentity.from_files``.

Private keys stay private. ``SigningIdentity.from_files`` refuses a key file that group or
others can read or write, and says how to fix it (``chmod 600 FILE``). The development folder
(0700, shared with the watermark key of ``keys.watermark_key``) and its key (0600) are made
private again, with a logged warning, if their permissions were loosened.

Validity and trust are reported separately: ``status`` says whether the manifest is intact and
its signature and hashes check out; ``trusted`` says whether the signer chains to a trust anchor
the reader was given. A development-signed file therefore reads ``status="valid",
trusted=False``. Nothing here touches the network: no timestamp authority unless one is
configured, no OCSP, no remote manifests.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vasa_jax.atomic import atomic_path, write_bytes
from vasa_jax.safety import keys

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATION_LABEL = "org.vasa_jax.generation"
DEV_DIR_ENV = keys.PRIVATE_DIR_ENV  # "VASA_JAX_C2PA_DIR"
DEFAULT_DEV_DIR = keys.DEFAULT_PRIVATE_DIR  # "~/.config/vasa_jax/c2pa"
DEV_ROOT_FILE = "dev-root-ca.pem"  # the development root CA certificate (its key is discarded)
DEV_CHAIN_FILE = "dev-signer-chain.pem"  # signing certificate, then the root CA certificate
DEV_KEY_FILE = "dev-signer-key.pem"  # the signing certificate's private key, mode 0600

_ALGS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
_UNTRUSTED = "signingCredential.untrusted"
_DEV_ORG = "vasa_jax LOCAL DEVELOPMENT certificate - not a vetted identity"
# What c2pa-rs 0.91 checks when signing and verifying. With its default configuration it
# accepts the extended key usages emailProtection, timeStamping and OCSPSigning, but rejects a
# certificate whose only one is documentSigning or the C2PA claim-signing purpose.
_CERT_PROFILE = ("C2PA requires an X.509 v3 signing certificate issued by a CA (not self-signed), "
                 "with a critical keyUsage including digitalSignature, the extendedKeyUsage "
                 "emailProtection (no anyExtendedKeyUsage) and an authorityKeyIdentifier; the "
                 "chain file lists it first, then its CA certificates")
# Reading never goes to the network: no manifests fetched from URLs, no revocation checks.
_READ_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


class ProvenanceError(Exception):
    """A manifest could not be written or read; the message names the file, cause and fix."""


@dataclasses.dataclass(frozen=True)
class SigningIdentity:
    """Who signs: ``cert_chain_pem`` (PEM, signing certificate first, then its CA certificates),
    the signing certificate's unencrypted PEM ``private_key_pem``, the C2PA algorithm ``alg``
    and an optional RFC 3161 timestamp authority URL ``tsa_url`` (None: no timestamp)."""

    cert_chain_pem: bytes
    private_key_pem: bytes = dataclasses.field(repr=False)
    alg: str = "es256"
    tsa_url: str | None = None

    @classmethod
    def from_files(cls, cert_chain_pem: str | os.PathLike, private_key_pem: str | os.PathLike,
                   alg: str = "es256", tsa_url: str | None = None) -> SigningIdentity:
        """Load a user's certificate chain and key from PEM files. Checks that the key file is
        private to its owner (no access for group or others), that both parse, that they belong
        together, and that the chain is not a lone self-signed certificate. Raises
        ProvenanceError."""
        alg = alg.lower()
        if alg not in _ALGS:
            raise ProvenanceError(f"Unknown C2PA signing algorithm {alg!r}; use one of {_ALGS}.")
        if tsa_url is not None and not tsa_url.startswith(("http://", "https://")):
            raise ProvenanceError(f"Timestamp authority URL {tsa_url!r} must be http(s)://.")
        chain_pem = _read_pem(cert_chain_pem, "a PEM certificate chain (signing certificate "
                                              "first, then its CA certificates)")
        key_pem = _read_pem(private_key_pem, "the signing certificate's PEM private key")
        problem = keys.open_permissions(private_key_pem, "C2PA signing key")
        if problem:
            raise ProvenanceError(problem)
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as e:
            raise ProvenanceError(f"{cert_chain_pem} holds no readable PEM certificates ({e}); "
                                  "expected '-----BEGIN CERTIFICATE-----' blocks.") from e
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError as e:
            raise ProvenanceError(f"{private_key_pem} is an encrypted private key; give an "
                                  "unencrypted one (`openssl pkey -in KEY -out PLAIN`).") from e
        except ValueError as e:
            raise ProvenanceError(f"{private_key_pem} is not a readable PEM private key "
                                  f"({e}).") from e
        if _spki(key.public_key()) != _spki(chain[0].public_key()):
            raise ProvenanceError(f"The private key in {private_key_pem} does not belong to the "
                                  f"first certificate in {cert_chain_pem}; the chain must start "
                                  "with the certificate of this key.")
        if len(chain) == 1 and chain[0].issuer == chain[0].subject:
            raise ProvenanceError(f"{cert_chain_pem} holds a single self-signed certificate. "
                                  f"{_CERT_PROFILE}. For local tests use ensure_dev_certificate().")
        return cls(chain_pem, key_pem, alg, tsa_url)

    @property
    def subject(self) -> str:
        """The signing certificate's subject, e.g. ``CN=...,O=...``."""
        return x509.load_pem_x509_certificates(self.cert_chain_pem)[0].subject.rfc4514_string()

    @property
    def expires(self) -> datetime.datetime:
        """When the signing certificate stops being valid (UTC)."""
        return x509.load_pem_x509_certificates(self.cert_chain_pem)[0].not_valid_after_utc


@dataclasses.dataclass(frozen=True)
class ProvenanceReport:
    """What ``read_manifest`` found in one file.

    ``status``: "absent" (no C2PA manifest), "invalid" (a manifest that fails verification, e.g.
    the video bytes changed after signing, or that cannot be parsed) or "valid" (signature and
    content hashes verify). ``trusted``: the signer chains to a trust anchor given to the
    reader; False for development certificates, which do not affect ``status``.
    ``errors`` lists the verification failures as ``"code: explanation"`` (the untrusted-signer
    code is expressed by ``trusted`` instead). ``generation`` is the ``org.vasa_jax.generation``
    assertion's data, if any; ``signer`` the signing certificate's ``CN=..., O=...``.
    """

    path: str
    status: Literal["valid", "invalid", "absent"]
    trusted: bool = False
    digital_source_type: str | None = None
    claim_generator: str | None = None
    signer: str | None = None
    generation: dict[str, Any] | None = None
    errors: tuple[str, ...] = ()


def dev_certificate_dir(directory: str | os.PathLike | None = None) -> Path:
    """The development certificate directory: ``directory``, else ``$VASA_JAX_C2PA_DIR``,
    else ``~/.config/vasa_jax/c2pa`` (``keys.private_dir``)."""
    return keys.private_dir(directory)


def ensure_dev_certificate(directory: str | os.PathLike | None = None) -> SigningIdentity:
    """Return the local development signing identity, creating it on first use.

    The directory (see ``dev_certificate_dir``) gets ``dev-root-ca.pem``,
    ``dev-signer-chain.pem`` and ``dev-signer-key.pem`` (mode 0600). Later calls reuse them;
    a signing certificate that has expired (or expires within a day) is replaced. Concurrent
    callers are serialised with a lock file so they all end up with the same identity. If
    the directory (0700) or the key (0600) were opened to group or others, they are made
    private again and a warning is logged.
    """
    directory = keys.ensure_private_dir(directory)
    chain, key = directory / DEV_CHAIN_FILE, directory / DEV_KEY_FILE
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (chain.exists() and key.exists()):
            _write_dev_chain(directory)
        keys.make_private(key)
        try:
            identity = SigningIdentity.from_files(chain, key)
            soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
            if identity.expires < soon:
                _write_dev_chain(directory)
                identity = SigningIdentity.from_files(chain, key)
        except ProvenanceError as e:
            raise ProvenanceError(f"{e} Delete {directory} to create a fresh development "
                                  "certificate.") from e
    return identity


def sign_mp4(src: str | os.PathLike, dst: str | os.PathLike | None = None, *,
             identity: SigningIdentity | None = None, claim_generator: str = "vasa_jax/0.1",
             title: str | None = None, generation: Mapping[str, Any] | None = None,
             extra_assertions: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Write ``src`` with an embedded, signed C2PA manifest to ``dst`` (None: ``src`` itself).

    The manifest declares the video ``trainedAlgorithmicMedia`` created by ``claim_generator``
    (``"name/version"``); ``title`` defaults to the file name of ``dst``. ``generation`` (JSON
    values, e.g. ``{"model": ..., "seed": 3, "watermark": True}``) becomes the
    ``org.vasa_jax.generation`` assertion; ``extra_assertions`` are further
    ``{"label": ..., "data": ...}`` assertions. ``identity`` defaults to the development
    certificate. A manifest already in ``src`` is replaced.

    The write is atomic: the signed file is built beside ``dst``, verified, and renamed into
    place; on any error nothing is left behind and ``src`` is untouched. Returns ``dst``.
    Raises ProvenanceError naming the cause.
    """
    src = os.fspath(src)
    dst = src if dst is None else os.fspath(dst)
    _require_mp4(src)
    manifest = _manifest_json(claim_generator, title or os.path.basename(dst), generation,
                              extra_assertions)
    identity = identity or ensure_dev_certificate()
    info = c2pa.C2paSignerInfo(identity.alg, identity.cert_chain_pem, identity.private_key_pem,
                               identity.tsa_url)
    try:
        with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest) as builder, \
                atomic_path(dst, suffix=".mp4") as tmp:
            with open(src, "rb") as source, open(tmp, "w+b") as out:
                builder.sign(signer, "video/mp4", source, out)
            report = read_manifest(tmp)
            if report.status != "valid":
                raise ProvenanceError(f"The manifest just written for {src} does not verify "
                                      f"({report.status}: {report.errors}); nothing was written.")
    except c2pa.C2paError as e:
        hint = f" {_CERT_PROFILE}." if "certificate" in str(e).lower() else ""
        raise ProvenanceError(f"Could not sign {src}: {e}.{hint}") from e
    return dst


def read_manifest(path: str | os.PathLike, *,
                  trust_anchors: str | os.PathLike | None = None) -> ProvenanceReport:
    """Verify the C2PA manifest of the mp4 at ``path`` and summarise it (see ProvenanceReport).

    ``trust_anchors``: optional PEM file of root CA certificates to trust (e.g. an
    organisation's CA, or ``dev-root-ca.pem`` to accept this machine's development
    certificate); without it no signer is trusted. Raises ProvenanceError if ``path`` is not
    an mp4 file.
    """
    path = os.fspath(path)
    _require_mp4(path)
    settings = dict(_READ_SETTINGS)
    if trust_anchors is not None:
        anchors = _read_pem(trust_anchors, "PEM root CA certificates to trust")
        settings["trust"] = {"trust_anchors": anchors.decode("ascii", "replace")}
    try:
        with c2pa.Context.from_dict(settings) as context, open(path, "rb") as f:
            reader = c2pa.Reader.try_create("video/mp4", f, None, context)
            if reader is None:
                return ProvenanceReport(path, "absent")
            with reader:
                store = json.loads(reader.json())
    except c2pa.C2paError as e:
        return ProvenanceReport(path, "invalid", errors=(f"manifest unreadable: {e}",))
    return _report(path, store)


def _report(path: str, store: dict) -> ProvenanceReport:
    """Turn the C2PA library's manifest-store JSON into a ProvenanceReport."""
    state = store.get("validation_state")  # "Invalid", "Valid" or "Trusted"
    errors = tuple(f"{s.get('code')}: {s.get('explanation', '')}"
                   for s in store.get("validation_status") or [] if s.get("code") != _UNTRUSTED)
    active = (store.get("manifests") or {}).get(store.get("active_manifest"))
    if active is None:
        return ProvenanceReport(path, "invalid", errors=errors + ("no active manifest",))
    if state not in ("Valid", "Trusted"):
        return _summary(path, "invalid", False, active, errors or (f"validation state {state}",))
    return _summary(path, "valid", state == "Trusted", active, errors)


def _summary(path: str, status: str, trusted: bool, active: dict,
             errors: tuple[str, ...]) -> ProvenanceReport:
    """A report carrying the facts of the active manifest ``active``."""
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {})
    source_type = next((a.get("digitalSourceType") for a in actions.get("actions", [])
                        if a.get("action") == "c2pa.created"), None)
    info = (active.get("claim_generator_info") or [{}])[0]
    generator = "/".join(str(info[k]) for k in ("name", "version") if info.get(k))
    sig = active.get("signature_info") or {}
    # The library reports the signing certificate's subject organisation as "issuer".
    signer = ", ".join(f"{k}={sig[f]}" for k, f in (("CN", "common_name"), ("O", "issuer"))
                       if sig.get(f))
    return ProvenanceReport(path, status, trusted, source_type,
                            generator or active.get("claim_generator"), signer or None,
                            assertions.get(GENERATION_LABEL), errors)


def _manifest_json(claim_generator: str, title: str, generation: Mapping[str, Any] | None,
                   extra_assertions: Sequence[Mapping[str, Any]] | None) -> str:
    """The manifest definition handed to the C2PA builder, as JSON."""
    name, _, version = claim_generator.partition("/")
    created = {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA}
    assertions = [{"label": "c2pa.actions", "data": {"actions": [created]}}]
    if generation is not None:
        assertions.append({"label": GENERATION_LABEL, "data": dict(generation)})
    for extra in extra_assertions or ():
        if not isinstance(extra, Mapping) or set(extra) != {"label", "data"}:
            raise ProvenanceError(f"Each extra assertion must be a dict with exactly 'label' and "
                                  f"'data', got {extra!r}.")
        assertions.append(dict(extra))
    manifest = {"claim_generator_info": [{"name": name, **({"version": version} if version
                                                           else {})}],
                "title": title, "format": "video/mp4", "assertions": assertions}
    try:
        return json.dumps(manifest)
    except (TypeError, ValueError) as e:
        raise ProvenanceError(f"generation facts and extra assertions must be JSON values "
                              f"(str, number, bool, None, list, dict): {e}.") from e


def _require_mp4(path: str) -> None:
    """Raise ProvenanceError unless ``path`` starts like an mp4 (an ISO BMFF 'ftyp' box)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != b"ftyp":
        raise ProvenanceError(f"{path} is not an mp4 file (it does not start with an ISO BMFF "
                              "'ftyp' box); C2PA manifests are written to and read from mp4 "
                              "video only.")


def _read_pem(path: str | os.PathLike, expected: str) -> bytes:
    """The bytes of ``path``, or a ProvenanceError naming the file and what it should hold."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ProvenanceError(f"Cannot read {path} ({e.strerror}); expected {expected}.") from e


def _spki(public_key) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, for comparing keys."""
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_dev_chain(directory: Path) -> None:
    """Create a development root CA and a signing certificate it issues; write both
    certificates and the signing key into ``directory``. The root key is never stored, so
    nothing else can be issued under this root."""
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = ec.generate_private_key(ec.SECP256R1())
    signer_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _dev_name("vasa_jax LOCAL DEVELOPMENT root CA")
    no_usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                              "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                              "encipher_only", "decipher_only"), False)
    root = (x509.CertificateBuilder()
            .subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(**{**no_usage, "key_cert_sign": True,
                                            "crl_sign": True}), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256()))
    signer = (x509.CertificateBuilder()
              .subject_name(_dev_name("vasa_jax LOCAL DEVELOPMENT signer"))
              .issuer_name(root_name)
              .public_key(signer_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1825))
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(**{**no_usage, "digital_signature": True}),
                             critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                             critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  root_key.public_key()), critical=False)
              .sign(root_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    write_bytes(directory / DEV_KEY_FILE, signer_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), mode=0o600)
    write_bytes(directory / DEV_ROOT_FILE, root.public_bytes(pem), mode=0o644)
    write_bytes(directory / DEV_CHAIN_FILE, signer.public_bytes(pem) + root.public_bytes(pem),
                mode=0o644)


def _dev_name(common_name: str) -> x509.Name:
    """A certificate name that says plainly it belongs to a development certificate."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, _DEV_ORG)])


