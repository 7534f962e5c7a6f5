#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/corpus/<target>/seed-*, from realistic inputs:
the examples/ config files, real tokens signed with the fixture keys in fixtures/, protobuf
messages as Envoy sends them, and typical bodies. Rerun after changing it:

    python3 fuzz/seeds.py          # needs the `cryptography` package for the JWTs

Protobuf is encoded by hand below (a dozen lines), so nothing but Python is needed for it.
"""

import base64
import json
import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
EXAMPLES = ROOT / "examples"


def write(target, name, data):
    directory = FUZZ / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (directory / f"seed-{name}").write_bytes(data)


# --- protobuf, by hand ---------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, value):
    """A field: ints as varints, bools as 0/1, str/bytes/nested messages length-delimited."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def message(*fields):
    return b"".join(fields)


def map_entry(number, key, value):
    return field(number, message(field(1, key), field(2, value)))


# --- common --------------------------------------------------------------------------------

def common():
    write("common_config_yaml", "typed", """\
name: orders
count: 3
ratio: 0.5
enabled: true
timeout: 1h30m
matchers:
  method: { in: [GET, HEAD] }
  path: { regex: "/orders/[0-9]+" }
  user: { present: true }
items:
  - key: a
    value: "1"
    tags: [x, y]
    children:
      - { key: b, children: [{ key: c }] }
""")
    write("common_config_yaml", "anchors", """\
name: &n anchored
items:
  - &item { key: k, value: v }
  - *item
  - { key: *n, tags: [ "quoted \\u00e9", 'single', plain ] }
""")
    write("common_config_yaml", "typo", "name: x\ncuont: 3\ntimeout: 10\n")
    write("common_config_yaml", "duration", "1h2m3.5s500ms1us")
    for example in ["ratelimit/config/gateway.yaml", "extauth/policies.yaml", "transform/transformations.yaml"]:
        write("common_config_yaml", example.split("/")[-1], (EXAMPLES / example).read_text())

    write("common_matcher", "regex", '{ regex: "/orders/[0-9]+" }\n/orders/42\n/orders/42/items\n/orders/')
    write("common_matcher", "in", "{ in: [GET, HEAD] }\nGET\nPOST\n")
    write("common_matcher", "contains", "contains: write\nread\nwrite\nwriter")
    write("common_matcher", "present", "{ present: false }\n")
    write("common_matcher", "prefix", "prefix: spiffe://cluster.local/ns/checkout/\nspiffe://cluster.local/ns/checkout/sa/web")
    write("common_matcher", "unicode", '{ regex: "(?i)caf\u00e9|\\\\p{Greek}+" }\nCAF\u00c9\n\u03b1\u03b2\u03b3')


# --- ratelimit -----------------------------------------------------------------------------

def entry(key, value):
    return field(1, message(field(1, key), field(2, value)))


def descriptor(*entries, limit=None, hits=None):
    parts = list(entries)
    if limit:
        parts.append(field(2, message(field(1, limit[0]), field(2, limit[1]))))
    if hits is not None:
        parts.append(field(3, message(field(1, hits))))
    return field(2, message(*parts))


def rate_limit_request(domain, *descriptors, hits=None):
    parts = [field(1, domain), *descriptors]
    if hits is not None:
        parts.append(field(3, hits))
    return message(*parts)


def ratelimit():
    write("ratelimit_rules", "gateway.yaml", (EXAMPLES / "ratelimit/config/gateway.yaml").read_text())
    write("ratelimit_rules", "fuzz.yaml", (FUZZ / "fixtures/ratelimit_rules.yaml").read_text())
    write("ratelimit_rules", "invalid.yaml", """\
domain: bad
descriptors:
  - key: a
    rate_limit: { unit: fortnight, requests_per_unit: 1 }
  - key: a
    rate_limit: { unit: second, requests_per_unit: 1, burst: 2 }
  - key: b
    value: x
    share_threshold: true
    rate_limits: [{ unlimited: true }, { unit: hour, requests_per_unit: 3 }]
""")

    write("ratelimit_lookup", "generic", "\ngateway\ngeneric_key=generic")
    write("ratelimit_lookup", "nested", "rl:\ngateway\ngeneric_key=nested\nuser=alice")
    write("ratelimit_lookup", "wildcard", "\nfuzz\npath=/api/v1/orders")
    write("ratelimit_lookup", "deep", "p_\nfuzz\nuser=bob_1\nplan=free")
    write("ratelimit_lookup", "key-only", "\ngateway\nremote_address=10.0.0.1")

    # First byte: option bits; second: the clock's position in the window.
    demo, extra = b"\x08\x00", b"\x09\x2a"
    write("ratelimit_request", "generic", demo + rate_limit_request("gateway", descriptor(entry("generic_key", "generic"))))
    write("ratelimit_request", "two-limits", b"\x3a\x10" + rate_limit_request(
        "gateway", descriptor(entry("api_key", "k1")), descriptor(entry("generic_key", "nested"), entry("user", "u")), hits=2))
    write("ratelimit_request", "override", demo + rate_limit_request(
        "gateway", descriptor(entry("remote_address", "10.0.0.1"), limit=(1, 2), hits=5)))
    write("ratelimit_request", "token-bucket", extra + rate_limit_request(
        "fuzz", descriptor(entry("user", "ann"), entry("plan", "free"), hits=3), descriptor(entry("path", "/health"))))
    write("ratelimit_request", "huge-hits", extra + rate_limit_request(
        "fuzz", descriptor(entry("path", "/api/x"), hits=2**64 - 1), descriptor(entry("tenant", "t"), hits=2**63)))
    write("ratelimit_request", "unknown-domain", demo + rate_limit_request("nope", descriptor(entry("a", "b"))))


# --- extauth -------------------------------------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(header, claims, sign):
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def extauth():
    policies = (EXAMPLES / "extauth/policies.yaml").read_text()
    write("extauth_policy", "demo.yaml", policies)
    write("extauth_policy", "jwt.yaml", """\
policies:
  - name: orders
    hosts: [orders.example.com, "*.orders.example.com"]
    identity:
      methods:
        - name: users
          jwt:
            issuer: https://idp.fuzz.invalid/realms/main
            jwks_uri: https://idp.fuzz.invalid/keys
            audiences: [orders]
            algorithms: [RS256, ES256]
            leeway: 10s
            jwks_refresh: 5m
            required_scopes: [orders.read]
            required_claims:
              tenant: { in: [acme, globex] }
        - name: discovered
          jwt: { issuer: "http://127.0.0.1:1/" }
        - name: opaque
          introspection:
            url: https://idp.fuzz.invalid/introspect
            client_id: gatehouse
            client_secret: s3cret
        - name: mesh
          mtls: { allow: [{ prefix: "spiffe://cluster.local/ns/checkout/" }] }
      expression: "(users || opaque) && !mesh || discovered"
    authorization:
      - name: writes
        when: { method: { in: [POST, PUT] } }
        require: { scopes: { contains: orders.write } }
      - name: gold
        cel: 'identity.metadata.plan == "gold" && request.path.startsWith("/orders/")'
      - name: team
        rego:
          query: data.orders.allow
          source: |
            package orders
            default allow := false
            allow if input.request.method in {"GET", "HEAD"}
    response:
      headers: { x-user-id: { from: sub }, x-gateway: { value: gatehouse } }
      query_set: { caller: { from: sub } }
      signed_jwt: { audience: orders-api, ttl: 30s, claims: [metadata.plan, claims.tenant] }
default_policy: orders
""")
    write("extauth_policy", "errors.yaml", """\
policies:
  - name: dup
    identity: { any_of: [{ name: k, api_key: { keys: [{ id: a, hash: "md5:00" }] } }] }
  - name: dup
    identity: { all_of: [{ name: u, basic: { users: ["x:notahash"] } }], expression: "u &&" }
    authorization: [{ name: c, cel: "1 +" }, { name: r, rego: { source: "package x\\nallow if {", query: x } }]
""")

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    es_key = serialization.load_pem_private_key((FUZZ / "fixtures/fuzz_es256_key.pem").read_bytes(), None)
    rs_key = serialization.load_pem_private_key((FUZZ / "fixtures/fuzz_rs256_key.pem").read_bytes(), None)

    def es256(data):
        r, s = decode_dss_signature(es_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def rs256(data):
        return rs_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    es, rs = {"alg": "ES256", "typ": "JWT", "kid": "fuzz-es256"}, {"alg": "RS256", "kid": "fuzz-rs256"}
    good = {"iss": "https://issuer.fuzz.invalid", "aud": "gatehouse", "sub": "alice", "exp": 4102444800,
            "nbf": 1700000000, "iat": 1700000000, "scope": "orders:read orders:write", "tenant": "acme"}
    public_jwks = (FUZZ / "fixtures/jwks.json").read_bytes()
    tokens = {
        "es256-valid": jwt(es, good, es256),
        "rs256-valid": jwt(rs, dict(good, aud=["other", "gatehouse"], scope=None, scp=["orders:read"]), rs256),
        "expired": jwt(es, dict(good, exp=1700000000), es256),
        "wrong-aud": jwt(es, dict(good, aud="other"), es256),
        "aud-mistyped": jwt(es, dict(good, aud=["gatehouse", 1]), es256),
        "exp-string": jwt(es, dict(good, exp="4102444800"), es256),
        "iss-array": jwt(rs, dict(good, iss=["https://issuer.fuzz.invalid"]), rs256),
        "unknown-kid": jwt(dict(es, kid="rotated"), good, es256),
        "no-kid": jwt({"alg": "ES256"}, good, es256),
        "crit": jwt(dict(es, crit=["exp"]), good, es256),
        "alg-none": jwt({"alg": "none", "kid": "fuzz-es256"}, good, lambda _: b""),
        "alg-confusion": jwt({"alg": "HS256", "kid": "fuzz-rs256"}, good, lambda _: public_jwks[:32]),
        "rs-as-es": jwt(dict(rs, alg="ES256"), good, rs256),
        "bad-signature": jwt(es, good, lambda d: es256(d)[::-1]),
    }
    for name, token in tokens.items():
        # First byte: bit 0 = strict policy, bit 1 = build signed claims from the rest.
        write("extauth_jwt", name, b"\x00" + token.encode())
    write("extauth_jwt", "es256-valid-strict", b"\x01" + tokens["es256-valid"].encode())
    write("extauth_jwt", "signed-claims", b"\x02" + bytes(range(64)))

    def check_request(method, host, path, headers=(), context=(), body=b"", source=None, sni=None):
        http = [field(2, method), field(4, path), field(5, host), field(6, "https")]
        http += [map_entry(3, k, v) for k, v in headers]
        if body:
            http.append(field(12, body))
        attributes = [field(4, message(field(2, message(*http))))]
        attributes += [map_entry(10, k, v) for k, v in context]
        if source:
            address = message(field(1, message(field(2, source[0]), field(3, source[1]))))
            attributes.append(field(1, message(field(1, address), field(4, "spiffe://gatehouse.test/demo"))))
        if sni:
            attributes.append(field(12, message(field(1, sni))))
        return message(field(1, message(*attributes)))

    key = [("x-api-key", "demo-key"), ("x-request-id", "req-1")]
    write("extauth_check_request", "keys", check_request("GET", "api.example.com", "/orders?x=1", key, [("gatehouse_policy", "keys")]))
    write("extauth_check_request", "keys-query", check_request("GET", "api.example.com", "/auth/keys?api_key=demo-key&api_key=2", [], [("gatehouse_policy", "keys")]))
    write("extauth_check_request", "host", check_request("POST", "keys.gatehouse.test:8443", "/", [("X-API-KEY", "wrong")], body=b'{"a":1}'))
    write("extauth_check_request", "basic", check_request("GET", "h", "/", [("authorization", "Basic ZGVtbzpkZW1vLXBhc3N3b3Jk")], [("gatehouse_policy", "basic")]))
    write("extauth_check_request", "rules", check_request("POST", "h", "/auth/rules/admin", key + [("cookie", "a=b; session=c")], [("gatehouse_policy", "rules")]))
    write("extauth_check_request", "mtls", check_request("GET", "h", "/", [], [("gatehouse_policy", "mtls")], source=("10.1.2.3", 44321), sni="gatehouse.test"))
    write("extauth_check_request", "unknown", check_request("GET", "h", "/", [], [("gatehouse_policy", "nope")]))

    write("extauth_forward_auth", "keys", "GET /forward-auth/keys/orders/42?page=2 HTTP/1.1\r\nhost: gatehouse:8080\r\nx-api-key: demo-key\r\nx-request-id: r1\r\n\r\n")
    write("extauth_forward_auth", "traefik", "GET /forward-auth HTTP/1.1\r\nx-forwarded-method: POST\r\nx-forwarded-proto: https\r\nx-forwarded-host: keys.gatehouse.test\r\nx-forwarded-uri: /orders?api_key=demo-key\r\nx-forwarded-for: 203.0.113.7, 10.0.0.1\r\n\r\n")
    write("extauth_forward_auth", "nginx", "GET /forward-auth/basic HTTP/1.1\r\nx-original-method: DELETE\r\nx-original-uri: /admin/users/7\r\nauthorization: Basic ZGVtbzpkZW1vLXBhc3N3b3Jk\r\n\r\n")
    write("extauth_forward_auth", "repeated", "POST /forward-auth/rules/auth/rules HTTP/1.1\r\nx-api-key: demo-key\r\ncookie: a=1\r\ncookie: b=2\r\n\r\n{\"order\": 1}")
    write("extauth_forward_auth", "public", "HEAD /forward-auth/public/ HTTP/1.1\r\n\r\n")


# --- transform -----------------------------------------------------------------------------

ORDER_XML = """<?xml version="1.0" encoding="UTF-8"?>
<order id="42" xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <customer>Ann &amp; Bob</customer>
  <item sku="a1"><qty>2</qty></item>
  <item sku="b2">text<qty>1</qty>more</item>
  <note><![CDATA[<b>fragile</b>]]></note>
  <empty/>
  <!-- comment --><?pi data?>
</order>"""

SOAP_XML = """<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>
<GetOrderResponse><order><id>7</id><item>x</item></order></GetOrderResponse></soap:Body></soap:Envelope>"""

ORDER_JSON = {"order": {"@id": "42", "customer": "Ann & Bob", "item": [{"@sku": "a1", "qty": 2}, {"@sku": "b2", "#text": "t", "qty": 1.5}],
                        "note": None, "flags": [True, False], "nested": {"a": {"b": {"c": "<&>"}}}}}


def transform():
    for choice, name, xml in [(0, "order", ORDER_XML), (1, "order-arrays", ORDER_XML), (0, "soap", SOAP_XML),
                              (2, "prefix", '<a x="1"><value>v</value><b _y="2">t</b></a>'),
                              (0, "entities", "<r>&lt;&#65;&#x42;&quot;&apos;</r>")]:
        write("transform_xml_to_json", name, bytes([choice]) + xml.encode())
    for choice, name, doc in [(0, "order", ORDER_JSON), (0x81, "soap-root", {"GetOrder": {"id": 7}}),
                              (0x80, "no-single-root", {"a": 1, "b": [1, 2]}), (2, "prefix", {"a": {"_x": "1", "value": "t"}}),
                              (0, "unicode", {"r\u00e9sum\u00e9": "\u2603", "n": -1e300})]:
        write("transform_json_to_xml", name, bytes([choice]) + json.dumps(doc).encode())

    write("transform_json_patch", "demo", "\n".join([
        '{"order": {"id": 7}, "password": "p", "legacy_name": "n", "list": [1, 2]}',
        'set /meta/user "ann"',
        'set /meta/page 1',
        'merge /meta {"source": "gateway", "version": 2}',
        'remove /password',
        'rename /legacy_name /name',
        'set /list/- 3',
        'set /list/0 {"a": null}',
        'set /with~1slash~0tilde true',
    ]))
    write("transform_json_patch", "arrays", '[[0, [1, [2]]]]\nset /0/1/1/0 9\nremove /0/1/0\nmerge /0 {"x": 1}\nrename /0 /1')
    write("transform_json_patch", "root", 'null\nset  {"a": 1}\nmerge  {"a": null, "b": {"c": 1}}\nremove /b/c\nset /b/c/d 1')
    write("transform_json_patch", "scalar", '"s"\nset /a 1\nrename /x /y\nmerge /a/b 2')

    write("transform_template", "get", "GET /orders/42?page=2&q=shoes HTTP/1.1\nx-user: ann\nx-request-id: r-1\nx-b64: aGVsbG8=\n\n")
    write("transform_template", "json", 'POST /orders HTTP/1.1\ncontent-type: application/json\n\n{"order": {"id": 7}, "items": [{"name": "a", "qty": 2}, {"name": "b", "qty": "x"}]}')
    write("transform_template", "error", 'GET / HTTP/1.1\nx-fuzz-status: 503\nx-request-id: "quoted"\n\nupstream said \"no\"\n\u2603\t\x01')
    write("transform_template", "override", "PUT /a HTTP/1.1\nx-http-method-override: PATCH\nx-b64: !!notbase64\n\n[1, 2, {\"order\": {\"id\": {\"deep\": true}}}]")

    def headers(*pairs):
        return field(1, message(*[field(1, message(field(1, k), field(3, v))) for k, v in pairs]))

    def req_headers(pairs, end=False):
        return message(field(2, message(headers(*pairs), field(3, end))))

    def resp_headers(pairs, end=False):
        return message(field(3, message(headers(*pairs), field(3, end))))

    def req_body(body, end=True):
        return message(field(4, message(field(1, body), field(2, end))))

    def resp_body(body, end=True):
        return message(field(5, message(field(1, body), field(2, end))))

    def stream(choice, *messages):
        return bytes([choice]) + b"".join(varint(len(m)) + m for m in messages)

    names = ["create", "envelope", "errors", "gzip", "headers", "json", "limited", "rewrite", "soap", "strict"]
    index = {n: i for i, n in enumerate(names)}
    json_body = json.dumps({"order": {"id": 7}, "password": "p", "legacy_name": "n", "tenant": "acme"}).encode()
    post = [(":method", "POST"), (":path", "/tx/json?page=3"), (":authority", "gw"), ("content-type", "application/json"),
            ("content-length", str(len(json_body))), ("x-user", "ann")]
    ok_json = [(":status", "200"), ("content-type", "application/json")]
    write("transform_exchange", "json", stream(index["json"], req_headers(post), req_body(json_body),
                                               resp_headers(ok_json), resp_body(b'{"headers": {}, "x": 1}')))
    write("transform_exchange", "headers", stream(index["headers"], req_headers([(":method", "GET"), (":path", "/tx/headers"),
                                                                                 ("x-legacy-token", "t"), ("x-internal-debug", "1")], end=True),
                                                  resp_headers([(":status", "200"), ("x-powered-by", "php")], end=True)))
    write("transform_exchange", "create", stream(index["create"], req_headers([(":method", "GET"), (":path", "/tx/create?q=shoes")], end=True)))
    write("transform_exchange", "soap", stream(index["soap"], req_headers([(":method", "POST"), (":path", "/tx/soap")]),
                                               req_body(json.dumps({"GetOrder": {"id": 7}}).encode()),
                                               resp_headers([(":status", "200"), ("content-type", "text/xml")]),
                                               resp_body(SOAP_XML.encode())))
    write("transform_exchange", "errors", stream(index["errors"], req_headers([(":method", "GET"), (":path", "/"), ("x-request-id", "r")], end=True),
                                                 resp_headers([(":status", "503"), ("content-length", "5")]), resp_body(b"oops!")))
    import gzip
    packed = gzip.compress(json_body)
    write("transform_exchange", "gzip", stream(index["gzip"], req_headers([(":method", "POST"), (":path", "/"), ("content-encoding", "gzip"),
                                                                           ("content-length", str(len(packed)))]), req_body(packed)))
    write("transform_exchange", "too-large", stream(index["json"], req_headers(post[:4] + [("content-length", "99999999")])))
    write("transform_exchange", "partial", stream(index["limited"], req_headers([(":method", "POST"), (":path", "/")]),
                                                  req_body(b'{"tenant": "a"', end=False), req_body(b"}")))
    write("transform_exchange", "unknown", stream(len(names), req_headers([(":method", "GET"), (":path", "/")], end=True)))
    write("transform_exchange", "envelope", stream(index["envelope"], req_headers([(":method", "PUT"), (":path", "/tx/envelope/a?b=c"),
                                                                                   ("content-length", "2")]), req_body(b"hi")))


if __name__ == "__main__":
    corpus = FUZZ / "corpus"
    for directory in corpus.glob("*"):
        for seed in directory.glob("seed-*"):
            seed.unlink()
    common()
    ratelimit()
    extauth()
    transform()
    print(f"seeds written to {corpus}")
