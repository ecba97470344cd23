"""The Amazon RDS CA bundle shipped in the layer: certificates, issued for RDS, in force, usable by ssl."""

from __future__ import annotations

import datetime as dt
import re
import ssl

from cryptography import x509
from cryptography.x509.oid import NameOID

from payments.adapters.db import RDS_CA_BUNDLE

# RDS Proxy presents ACM certificates, which chain to Amazon Trust Services' roots.
RDS_PROXY_ROOTS = {f"Amazon Root CA {n}" for n in (1, 2, 3, 4)}
KEY_TYPES = ("RSA2048 G1", "RSA4096 G1", "ECC384 G1")


def _certificates() -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(RDS_CA_BUNDLE.read_bytes())


def _field(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def test_the_bundle_ships_inside_the_package() -> None:
    # sam build copies layers/shared into the layer: the file sits next to the code that reads it
    assert RDS_CA_BUNDLE.is_file() and RDS_CA_BUNDLE.parent.parent.name == "payments"


def test_every_certificate_is_an_rds_or_rds_proxy_root_authority() -> None:
    certs = _certificates()
    assert len(certs) == RDS_CA_BUNDLE.read_text().count("-----BEGIN CERTIFICATE-----") > 50
    for cert in certs:
        subject = cert.subject
        cn = _field(subject, NameOID.COMMON_NAME)
        if cn in RDS_PROXY_ROOTS:
            assert _field(subject, NameOID.ORGANIZATION_NAME) == "Amazon"
        else:
            assert _field(subject, NameOID.ORGANIZATION_NAME) == "Amazon Web Services, Inc.", cn
            assert _field(subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == "Amazon RDS", cn
            assert re.fullmatch(r"Amazon RDS (Beta |Preview )?[a-z]+-[a-z]+-\d Root CA (RSA2048|RSA4096|ECC384) G1", cn)
        # A self-signed certificate authority: a trust anchor, nothing else
        assert cert.issuer == subject, cn
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, cn
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign, cn
    assert {_field(c.subject, NameOID.COMMON_NAME) for c in certs} >= RDS_PROXY_ROOTS


def test_no_certificate_is_expired_or_about_to() -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=180)
    for cert in _certificates():
        assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC)
        assert cert.not_valid_after_utc > soon, f"{cert.subject.rfc4514_string()} expires soon: refresh the bundle"


def test_each_region_has_all_three_key_types() -> None:
    # RDS lets each instance pick rds-ca-rsa2048-g1 (the default), rds-ca-rsa4096-g1 or rds-ca-ecc384-g1
    names = {_field(c.subject, NameOID.COMMON_NAME) for c in _certificates()}
    regions = {m.group(1) for n in names if (m := re.fullmatch(r"Amazon RDS ([a-z]+-[a-z]+-\d) Root CA .*", n))}
    assert {"us-east-1", "eu-west-1", "eu-central-1"} <= regions
    for region in regions:
        assert {f"Amazon RDS {region} Root CA {kind}" for kind in KEY_TYPES} <= names, region


def test_ssl_loads_every_certificate() -> None:
    context = ssl.create_default_context(cafile=str(RDS_CA_BUNDLE))
    assert len(context.get_ca_certs()) == len(_certificates())
