"""Signed C2PA manifests on generated mp4 files: sign, verify, tamper, certificates, atomicity;
private keys stay private (a user key open to others is refused, a loosened development folder
is made private again) and the watermark key never reaches a written file."""

import datetime
import logging
import os
import shutil
import stat
import struct

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from data_pipeline.synthtalk.generate import generate_clip
from vasa_jax.media.video_io import read_metadata, read_mp4, write_mp4
from vasa_jax.safety import keys, publish
from vasa_jax.safety.provenance import (DEV_CHAIN_FILE, DEV_DIR_ENV, DEV_KEY_FILE, DEV_ROOT_FILE,
                                        TRAINED_ALGORITHMIC_MEDIA, ProvenanceError,
                                        SigningIdentity, ensure_dev_certificate, read_manifest,
                                        sign_mp4)

FACTS = {"model": "vasa_jax-test", "seed": 7, "watermark": True}


@pytest.fixture(autouse=True)
def no_real_home(tmp_path, monkeypatch):
    """Development certificates go to a temporary directory, never the real home."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(DEV_DIR_ENV, str(tmp_path / "dev-c2pa"))
    monkeypatch.delenv(keys.KEY_FILE_ENV, raising=False)
    return tmp_path / "dev-c2pa"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """A 12-frame 64x64 mp4 with one second of a 440 Hz tone."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    frames = np.zeros((12, 64, 64, 3), np.uint8)
    frames[..., 1] = (np.arange(12) * 20)[:, None, None]
    audio = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    write_mp4(path, frames, audio)
    return str(path)


def copy_of(clip, directory, name="video.mp4") -> str:
    os.makedirs(directory, exist_ok=True)
    return shutil.copy(clip, os.path.join(directory, name))


def top_level_boxes(data: bytes):
    """(type, payload start, end) of each top-level ISO BMFF box."""
    i = 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = len(data) - i
        yield kind, i + header, i + size
        i += size


def make_chain(directory, org="Test Studio", eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,)):
    """A user CA and a signing certificate it issued, as chain/key/root PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{org} CA")])
    usage = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                           "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                           "encipher_only", "decipher_only"), False)

    def cert(subject, public_key, extensions, days):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
             .public_key(public_key).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=days)))
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(ca_key, hashes.SHA256())

    ca = cert(ca_name, ca_key.public_key(), [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(**{**usage, "key_cert_sign": True, "crl_sign": True}), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)], 30)
    leaf = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{org} signer"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]),
                key.public_key(), [
        (x509.KeyUsage(**{**usage, "digital_signature": True}), True),
        (x509.ExtendedKeyUsage(list(eku)), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)], 10)
    pem = serialization.Encoding.PEM
    paths = {n: os.path.join(directory, f"{n}.pem") for n in ("chain", "key", "root")}
    os.makedirs(directory, exist_ok=True)
    open(paths["chain"], "wb").write(leaf.public_bytes(pem) + ca.public_bytes(pem))
    open(paths["root"], "wb").write(ca.public_bytes(pem))
    open(paths["key"], "wb").write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    for path in paths.values():
        os.chmod(path, 0o600)  # from_files refuses a key that others can read
    return paths


def test_signed_file_reads_valid_ai_generated_and_still_plays(clip, tmp_path, no_real_home):
    src = copy_of(clip, tmp_path / "in")
    before = open(src, "rb").read()
    dst = str(tmp_path / "out" / "signed.mp4")
    assert sign_mp4(src, dst, generation=FACTS) == dst
    assert open(src, "rb").read() == before

    report = read_manifest(dst)
    assert report.status == "valid" and not report.trusted and report.errors == ()
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert report.claim_generator == "vasa_jax/0.1"
    assert report.generation == FACTS
    assert "DEVELOPMENT" in report.signer
    # The development root as a trust anchor turns the same file trusted.
    trusted = read_manifest(dst, trust_anchors=no_real_home / DEV_ROOT_FILE)
    assert trusted.status == "valid" and trusted.trusted

    frames, audio, fps, rate = read_mp4(src)
    got_frames, got_audio, got_fps, got_rate = read_mp4(dst)
    np.testing.assert_array_equal(got_frames, frames)
    np.testing.assert_array_equal(got_audio, audio)
    assert (got_fps, got_rate) == (fps, rate) and len(frames) == 12
    assert not (tmp_path / "home").exists()


def test_one_flipped_video_byte_is_invalid(clip, tmp_path):
    path = sign_mp4(copy_of(clip, tmp_path), generation=FACTS)
    data = bytearray(open(path, "rb").read())
    (start, end), = [(s, e) for kind, s, e in top_level_boxes(data) if kind == b"mdat"]
    data[(start + end) // 2] ^= 0x01
    open(path, "wb").write(data)
    report = read_manifest(path)
    assert report.status == "invalid"
    assert any("mismatch" in e for e in report.errors), report.errors


def test_unsigned_is_absent_and_non_mp4_is_a_clear_error(clip, tmp_path):
    assert read_manifest(clip).status == "absent"
    for name, content in [("notes.mp4", b"just some text, not a video" * 4), ("empty.mp4", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ProvenanceError, match="is not an mp4 file"):
            read_manifest(tmp_path / name)
        with pytest.raises(ProvenanceError, match="is not an mp4 file"):
            sign_mp4(tmp_path / name, tmp_path / "never.mp4")
    assert not (tmp_path / "never.mp4").exists()


def test_dev_certificate_created_once_and_reused(tmp_path, no_real_home):
    directory = tmp_path / "certs"
    first = ensure_dev_certificate(directory)
    files = {n: (directory / n).read_bytes() for n in (DEV_CHAIN_FILE, DEV_KEY_FILE,
                                                       DEV_ROOT_FILE)}
    assert stat.S_IMODE(os.stat(directory / DEV_KEY_FILE).st_mode) == 0o600
    assert "DEVELOPMENT" in first.subject and "not a vetted identity" in first.subject
    second = ensure_dev_certificate(directory)
    assert second == first
    assert {n: (directory / n).read_bytes() for n in files} == files
    # Without an argument the environment variable decides where it lives.
    assert not no_real_home.exists()
    ensure_dev_certificate()
    assert (no_real_home / DEV_KEY_FILE).exists()
    assert (no_real_home / DEV_KEY_FILE).read_bytes() != files[DEV_KEY_FILE]


def test_user_certificate_from_files(clip, tmp_path):
    paths = make_chain(tmp_path / "user")
    identity = SigningIdentity.from_files(paths["chain"], paths["key"])
    assert "private_key" not in repr(identity)
    path = sign_mp4(copy_of(clip, tmp_path), identity=identity, claim_generator="studio/2.3",
                    title="take 1")
    report = read_manifest(path, trust_anchors=paths["root"])
    assert report.status == "valid" and report.trusted
    assert report.signer == "CN=Test Studio signer, O=Test Studio"
    assert report.claim_generator == "studio/2.3" and report.generation is None
    assert not read_manifest(path).trusted


def test_bad_user_certificates_name_the_file_and_the_fix(tmp_path):
    paths = make_chain(tmp_path / "a")
    other = make_chain(tmp_path / "b")
    with pytest.raises(ProvenanceError, match=f"Cannot read {tmp_path}/missing.pem .*chain"):
        SigningIdentity.from_files(tmp_path / "missing.pem", paths["key"])
    with pytest.raises(ProvenanceError, match="does not belong to the first certificate"):
        SigningIdentity.from_files(paths["chain"], other["key"])
    with pytest.raises(ProvenanceError, match="not a readable PEM private key"):
        SigningIdentity.from_files(paths["chain"], paths["chain"])
    with pytest.raises(ProvenanceError, match="no readable PEM certificates"):
        SigningIdentity.from_files(paths["key"], paths["key"])
    with open(paths["chain"], "rb") as f:  # the signing certificate alone is not self-signed
        leaf = x509.load_pem_x509_certificates(f.read())[0]
    key = serialization.load_pem_private_key(open(paths["key"], "rb").read(), None)
    self_signed = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.subject)
                   .public_key(key.public_key()).serial_number(1)
                   .not_valid_before(leaf.not_valid_before_utc)
                   .not_valid_after(leaf.not_valid_after_utc).sign(key, hashes.SHA256()))
    (tmp_path / "self.pem").write_bytes(self_signed.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ProvenanceError, match="single self-signed certificate"):
        SigningIdentity.from_files(tmp_path / "self.pem", paths["key"])
    with pytest.raises(ProvenanceError, match="Unknown C2PA signing algorithm"):
        SigningIdentity.from_files(paths["chain"], paths["key"], alg="rs256")


def test_certificate_the_library_rejects_explains_the_requirements(clip, tmp_path):
    paths = make_chain(tmp_path / "c", eku=(ExtendedKeyUsageOID.CODE_SIGNING,))
    identity = SigningIdentity.from_files(paths["chain"], paths["key"])
    with pytest.raises(ProvenanceError, match="certificate is invalid.*emailProtection"):
        sign_mp4(copy_of(clip, tmp_path / "in"), tmp_path / "out" / "a.mp4", identity=identity)
    assert list((tmp_path / "out").iterdir()) == []


def test_failed_sign_leaves_nothing_behind(clip, tmp_path):
    good = ensure_dev_certificate(tmp_path / "certs")
    wrong_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    bad = SigningIdentity(good.cert_chain_pem, wrong_key)
    src = copy_of(clip, tmp_path / "in")
    before = open(src, "rb").read()
    out = tmp_path / "out"
    with pytest.raises(ProvenanceError, match="Could not sign"):
        sign_mp4(src, out / "signed.mp4", identity=bad)
    assert list(out.iterdir()) == []
    with pytest.raises(ProvenanceError, match="Could not sign"):
        sign_mp4(src, identity=bad)  # in place
    assert os.listdir(tmp_path / "in") == ["video.mp4"]
    assert open(src, "rb").read() == before


def test_sign_in_place_replaces_the_file_atomically(clip, tmp_path):
    src = copy_of(clip, tmp_path / "in")
    assert sign_mp4(src, generation=FACTS) == src
    assert os.listdir(tmp_path / "in") == ["video.mp4"]
    assert read_manifest(src).generation == FACTS
    sign_mp4(src, generation={"seed": 8})  # re-signing replaces the manifest
    assert read_manifest(src).generation == {"seed": 8}
    assert read_manifest(src).status == "valid"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.reliability
def test_user_key_open_to_group_or_others_is_refused(tmp_path):
    paths = make_chain(tmp_path / "user")
    key = paths["key"]
    for loose in (0o640, 0o644, 0o604, 0o660):
        os.chmod(key, loose)
        with pytest.raises(ProvenanceError) as e:
            SigningIdentity.from_files(paths["chain"], key)
        assert str(e.value) == (f"{key} is open to group or others (mode 0{loose:o}), but a "
                                f"C2PA signing key must be private to you. Fix: chmod 600 {key}")
    os.chmod(key, 0o600)
    assert SigningIdentity.from_files(paths["chain"], key).alg == "es256"
    os.chmod(key, 0o400)  # read-only for its owner is fine too
    SigningIdentity.from_files(paths["chain"], key)
    os.chmod(paths["chain"], 0o644)  # certificates are public
    SigningIdentity.from_files(paths["chain"], key)


@pytest.mark.reliability
def test_loosened_dev_folder_and_key_are_made_private_again(tmp_path, caplog):
    directory = tmp_path / "certs"
    first = ensure_dev_certificate(directory)
    assert mode(directory) == 0o700 and mode(directory / DEV_KEY_FILE) == 0o600
    os.chmod(directory, 0o755)
    os.chmod(directory / DEV_KEY_FILE, 0o644)
    with caplog.at_level(logging.WARNING, logger=keys.__name__):
        assert ensure_dev_certificate(directory) == first
    assert mode(directory) == 0o700 and mode(directory / DEV_KEY_FILE) == 0o600
    assert f"{directory} was open to group or others (mode 0755); made it private" in caplog.text
    assert f"{DEV_KEY_FILE} was open to group or others (mode 0644)" in caplog.text
    caplog.clear()
    ensure_dev_certificate(directory)  # nothing to fix: nothing said
    assert caplog.text == ""


@pytest.mark.reliability
def test_watermark_key_shares_the_dev_folder_and_never_reaches_the_file(tmp_path, no_real_home):
    """A marked, signed video written the default way (this user's key, made on first use in
    the development folder) holds the key's fingerprint where asked, never the key."""
    frames = generate_clip(5, 0, 0, 25, 128)["frames"]
    audio = np.zeros(16000, np.float32)
    key = keys.watermark_key()
    assert key.source == str(no_real_home / keys.WATERMARK_KEY_FILE)
    out = publish.write_marked_video(tmp_path / "talk.mp4", frames, audio,
                                     generation={"watermark_key": key.fingerprint})
    data = open(out, "rb").read()
    for form in (key.secret, key.secret.hex().encode(), key.secret.hex().upper().encode(),
                 key.secret.hex()[:16].encode()):
        assert form not in data
    assert key.fingerprint.encode() in data
    assert (no_real_home / DEV_KEY_FILE).exists()  # one private folder for both keys
    report = read_manifest(out)
    assert report.status == "valid" and report.generation["watermark_key"] == key.fingerprint
    text = str(report) + str(read_metadata(out))
    assert key.secret.hex() not in text and key.secret.hex().upper() not in text
    verified = publish.verify_video(out)  # the same resolver finds the same key
    assert verified.watermark.detected and verified.watermark.key_fingerprint == key.fingerprint
    assert key.secret.hex() not in "\n".join(verified.lines())
