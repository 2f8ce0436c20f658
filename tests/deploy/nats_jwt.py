"""Makes a throw-away NATS operator, account and user (NKeys and JWTs, as `nsc` does) so that
check-deploy can run `nats-server -t` on kube/nats-config.yaml with a real operator-mode
auth file, and check that the service's .creds file has the shape the clients read.

    python tests/deploy/nats_jwt.py DIR

writes DIR/auth.conf (operator, system_account, resolver MEMORY, resolver_preload: what
`nsc generate config --mem-resolver` writes, and what the Secret nats-auth holds in a
cluster) and DIR/order-service.creds. Needs the `cryptography` package (Ed25519).
"""

import base64
import hashlib
import json
import os
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# NKey prefix bytes (github.com/nats-io/nkeys): the first base32 letter names the role.
PREFIX = {"seed": 18 << 3, "operator": 14 << 3, "account": 0, "user": 20 << 3}


def crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode(prefix_bytes, payload):
    raw = bytes(prefix_bytes) + payload
    raw += crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


class NKey:
    def __init__(self, role):
        self.role = role
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public = encode([PREFIX[role]], raw)
        private = self.key.private_bytes_raw()
        # Seed: the seed prefix's 5 bits, then the role's prefix, in two bytes.
        seed_prefix = [PREFIX["seed"] | (PREFIX[role] >> 5), (PREFIX[role] & 31) << 3]
        self.seed = encode(seed_prefix, private)


def b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer, subject, name, nats):
    claims = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject, "nats": nats}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode().rstrip("=")
    signing_input = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()) + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(issuer.key.sign(signing_input.encode()))


def main(directory):
    operator, system, account, user = NKey("operator"), NKey("account"), NKey("account"), NKey("user")
    operator_jwt = jwt(operator, operator.public, "orders", {"type": "operator", "version": 2,
                                                             "system_account": system.public})
    system_jwt = jwt(operator, system.public, "SYS", {"type": "account", "version": 2})
    account_jwt = jwt(operator, account.public, "ORDERS", {
        "type": "account", "version": 2,
        "limits": {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                   "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "conn": -1,
                   "leaf": -1, "wildcards": True}})
    user_jwt = jwt(account, user.public, "order-service", {"type": "user", "version": 2,
                                                          "subs": -1, "data": -1, "payload": -1})
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "auth.conf"), "w", encoding="utf-8") as handle:
        handle.write(f"operator: {operator_jwt}\nsystem_account: {system.public}\nresolver: MEMORY\n"
                     f"resolver_preload: {{\n  {system.public}: {system_jwt}\n  {account.public}: {account_jwt}\n}}\n")
    with open(os.path.join(directory, "order-service.creds"), "w", encoding="utf-8") as handle:
        handle.write(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                     f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n")
    print(f"operator {operator.public}, account {account.public}, user {user.public}")


if __name__ == "__main__":
    main(sys.argv[1])
