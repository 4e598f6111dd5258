"""A small Iceberg REST catalog server for the tests, on top of pyiceberg's SqlCatalog.

Usage: rest_catalog.py --port P --catalog-uri postgres://USER@HOST:PORT/DB --catalog-name NAME --warehouse URL
                       [--token T] [--credential ID:SECRET] [--prefix P] [--property KEY=VALUE ...]

It implements the routes of the Iceberg REST catalog spec (Apache Iceberg's rest-catalog-open-api.yaml) that the
REST clients of iceberg-rust and pyiceberg use: config, OAuth tokens (client_credentials), namespaces (list,
create, load, exists, update properties, drop) and tables (list, create, load, exists, commit, drop, rename,
register). Every call goes to pyiceberg's SqlCatalog on the Postgres database CATALOG_URI, so a table made or
changed through REST is the same `iceberg_tables` row the SQL catalog (philotes' own, pyiceberg's, Java's JDBC
catalog) reads. A commit is parsed with pyiceberg's own models (TableRequirement, TableUpdate) and applied by
`SqlCatalog.commit_table`: a failed requirement or a lost compare-and-set on the row answers 409
CommitFailedException, as the spec says.

--port 0 picks a free port. Binds 127.0.0.1 only. Prints one line `ready http://127.0.0.1:PORT` on stdout once it
listens (the catalog's tables are created before that); logs every request to stderr (never a header, so never
a token).
--token T: every request but the token endpoint needs `Authorization: Bearer T` (401 otherwise).
--credential ID:SECRET: `POST /v1/oauth/tokens` (grant_type client_credentials, form fields client_id and
  client_secret) answers the token when they match (the --token value, or a random one when --token is absent;
  either way requests then need it), 401 otherwise.
--prefix P: the config endpoint returns `prefix: P` in its overrides and every other route lives under /v1/P/.
--property KEY=VALUE: extra SqlCatalog properties (FileIO settings such as s3.endpoint).
"""
import argparse
import json
import secrets
import sys
import traceback

from flask import Flask, Response, request
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchIdentifierError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import SortOrder
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER
from pyiceberg.table.update import (
    AddSchemaUpdate,
    AssertCreate,
    SetCurrentSchemaUpdate,
    TableRequirement,
    TableUpdate,
)
from sqlalchemy.exc import IntegrityError

SEPARATOR = "\x1f"
REQUIREMENTS = TypeAdapter(list[TableRequirement])
UPDATES = TypeAdapter(list[TableUpdate])


class RestError(Exception):
    """An error answered with the REST error body {"error": {"message", "type", "code"}}."""

    def __init__(self, code, kind, message):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message


def error_response(code, kind, message):
    body = {"error": {"message": message, "type": kind, "code": code}}
    return Response(json.dumps(body), status=code, mimetype="application/json")


def json_response(body, code=200):
    return Response(json.dumps(body), status=code, mimetype="application/json")


def no_content():
    return Response(status=204)


def metadata_json(metadata):
    # The same JSON pyiceberg writes into the metadata file (aliases, no nulls).
    return json.loads(metadata.model_dump_json())


def load_result(table):
    return {"metadata-location": table.metadata_location, "metadata": metadata_json(table.metadata), "config": {}}


def namespace_of(path_part):
    """A namespace path parameter: levels joined by the unit separator (%1F, already decoded by the router)."""
    levels = tuple(path_part.split(SEPARATOR))
    if any(level == "" for level in levels):
        raise RestError(400, "BadRequestException", f"invalid namespace {path_part!r}")
    return levels


def body_json():
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise RestError(400, "BadRequestException", "the request body must be a JSON object")
    return body


def identifier_of(value, what):
    """A TableIdentifier of a request body: {"namespace": [...], "name": "..."}."""
    if not isinstance(value, dict) or not isinstance(value.get("namespace"), list) or not isinstance(value.get("name"), str):
        raise RestError(400, "BadRequestException", f"{what} must be {{\"namespace\": [...], \"name\": \"...\"}}")
    return tuple(value["namespace"]) + (value["name"],)


def partition_spec_of(value):
    """An UnboundPartitionSpec of a create-table request (field ids optional) as pyiceberg's PartitionSpec."""
    if not value or not value.get("fields"):
        return UNPARTITIONED_PARTITION_SPEC
    fields = []
    for i, field in enumerate(value["fields"]):
        fields.append(
            PartitionField(
                source_id=field["source-id"],
                field_id=field.get("field-id", 1000 + i),
                transform=field["transform"],
                name=field["name"],
            )
        )
    return PartitionSpec(*fields, spec_id=value.get("spec-id", 0))


def with_fresh_schema_ids(metadata, updates):
    """The updates with each added schema given its id as the spec (and Java's and iceberg-rust's catalogs) do:
    the id of an identical schema the table has, else one above the highest. A client need not set it
    (iceberg-rust sends 0); pyiceberg's metadata update would take the client's id as it is, so a second schema
    with id 0 would shadow the first. `set-current-schema -1` then means the schema added last, by its id."""
    schemas = {schema.schema_id: schema for schema in metadata.schemas}
    out, last_added = [], None
    for update in updates:
        if isinstance(update, AddSchemaUpdate):
            added = update.schema_
            same = [sid for sid, s in schemas.items() if s.fields == added.fields and s.identifier_field_ids == added.identifier_field_ids]
            if same:
                last_added = same[0]
                continue
            last_added = max(schemas) + 1
            schema = Schema(*added.fields, schema_id=last_added, identifier_field_ids=added.identifier_field_ids)
            schemas[last_added] = schema
            out.append(update.model_copy(update={"schema_": schema}))
        elif isinstance(update, SetCurrentSchemaUpdate) and update.schema_id == -1 and last_added is not None:
            out.append(update.model_copy(update={"schema_id": last_added}))
        else:
            out.append(update)
    return tuple(out)


def make_app(catalog, token=None, credential=None, prefix=None):
    app = Flask("rest_catalog")
    base = "/v1/" + prefix if prefix else "/v1"

    @app.errorhandler(RestError)
    def rest_error(e):
        return error_response(e.code, e.kind, e.message)

    @app.errorhandler(NoSuchTableError)
    def no_table(e):
        return error_response(404, "NoSuchTableException", str(e))

    @app.errorhandler(NoSuchNamespaceError)
    def no_namespace(e):
        return error_response(404, "NoSuchNamespaceException", str(e))

    @app.errorhandler(TableAlreadyExistsError)
    @app.errorhandler(NamespaceAlreadyExistsError)
    def already_exists(e):
        return error_response(409, "AlreadyExistsException", str(e))

    @app.errorhandler(NamespaceNotEmptyError)
    def not_empty(e):
        return error_response(409, "NamespaceNotEmptyException", str(e))

    @app.errorhandler(CommitFailedException)
    def commit_failed(e):
        return error_response(409, "CommitFailedException", str(e))

    @app.errorhandler(PydanticValidationError)
    @app.errorhandler(NoSuchIdentifierError)
    @app.errorhandler(ValueError)
    @app.errorhandler(KeyError)
    def bad_request(e):
        return error_response(400, "BadRequestException", f"{type(e).__name__}: {e}")

    @app.errorhandler(404)
    def no_route(e):
        return error_response(404, "NoSuchRouteException", f"no route {request.method} {request.path}")

    @app.errorhandler(405)
    def no_method(e):
        return error_response(405, "MethodNotAllowedException", f"method {request.method} not allowed on {request.path}")

    @app.errorhandler(Exception)
    def server_error(e):
        traceback.print_exc(file=sys.stderr)
        return error_response(500, "ServerErrorException", f"{type(e).__name__}: {e}")

    @app.before_request
    def authorize():
        if token is None or request.path == "/v1/oauth/tokens":
            return None
        if request.headers.get("Authorization", "") != f"Bearer {token}":
            return error_response(401, "NotAuthorizedException", "missing or wrong bearer token")
        return None

    @app.post("/v1/oauth/tokens")
    def oauth_tokens():
        form = request.form
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type", "error_description": "only client_credentials"}, 400)
        if credential is None or (form.get("client_id"), form.get("client_secret")) != credential:
            return json_response({"error": "invalid_client", "error_description": "unknown client id or secret"}, 401)
        return json_response(
            {
                "access_token": token,
                "token_type": "bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            }
        )

    @app.get("/v1/config")
    def config():
        overrides = {"prefix": prefix} if prefix else {}
        return json_response({"defaults": {}, "overrides": overrides})

    # Namespaces.

    @app.get(f"{base}/namespaces")
    def list_namespaces():
        parent = request.args.get("parent")
        namespaces = catalog.list_namespaces(namespace_of(parent) if parent else ())
        return json_response({"namespaces": [list(ns) for ns in namespaces]})

    @app.post(f"{base}/namespaces")
    def create_namespace():
        body = body_json()
        namespace = body.get("namespace")
        if not isinstance(namespace, list) or not namespace:
            raise RestError(400, "BadRequestException", "namespace must be a non-empty list")
        properties = body.get("properties") or {}
        try:
            catalog.create_namespace(tuple(namespace), properties)
        except IntegrityError as e:
            # SqlCatalog checks, then inserts: a namespace created in between is a duplicate key.
            raise NamespaceAlreadyExistsError(f"Namespace {tuple(namespace)} already exists") from e
        return json_response({"namespace": namespace, "properties": catalog.load_namespace_properties(tuple(namespace))})

    # GET routes answer HEAD too (Flask adds it): HEAD is the exists check, 204 or 404 without a body.
    @app.get(f"{base}/namespaces/<ns>")
    def load_namespace(ns):
        namespace = namespace_of(ns)
        if request.method == "HEAD":
            return no_content() if catalog.namespace_exists(namespace) else Response(status=404)
        return json_response({"namespace": list(namespace), "properties": catalog.load_namespace_properties(namespace)})

    @app.post(f"{base}/namespaces/<ns>/properties")
    def update_namespace_properties(ns):
        body = body_json()
        removals = set(body.get("removals") or [])
        updates = body.get("updates") or {}
        if removals & set(updates):
            raise RestError(422, "UnprocessableEntityException", f"keys both set and removed: {sorted(removals & set(updates))}")
        summary = catalog.update_namespace_properties(namespace_of(ns), removals, updates)
        return json_response({"updated": summary.updated, "removed": summary.removed, "missing": summary.missing})

    @app.delete(f"{base}/namespaces/<ns>")
    def drop_namespace(ns):
        catalog.drop_namespace(namespace_of(ns))
        return no_content()

    # Tables.

    @app.get(f"{base}/namespaces/<ns>/tables")
    def list_tables(ns):
        tables = catalog.list_tables(namespace_of(ns))
        return json_response({"identifiers": [{"namespace": list(t[:-1]), "name": t[-1]} for t in tables]})

    @app.post(f"{base}/namespaces/<ns>/tables")
    def create_table(ns):
        namespace = namespace_of(ns)
        body = body_json()
        if body.get("stage-create"):
            raise RestError(400, "BadRequestException", "stage-create is not supported by this server")
        if "name" not in body or "schema" not in body:
            raise RestError(400, "BadRequestException", "name and schema are required")
        sort_order = SortOrder.model_validate(body["write-order"]) if body.get("write-order") else UNSORTED_SORT_ORDER
        table = catalog.create_table(
            namespace + (body["name"],),
            schema=Schema.model_validate(body["schema"]),
            location=body.get("location"),
            partition_spec=partition_spec_of(body.get("partition-spec")),
            sort_order=sort_order,
            properties={k: str(v) for k, v in (body.get("properties") or {}).items()},
        )
        return json_response(load_result(table))

    @app.post(f"{base}/namespaces/<ns>/register")
    def register_table(ns):
        body = body_json()
        identifier = namespace_of(ns) + (body["name"],)
        table = catalog.register_table(identifier, body["metadata-location"], overwrite=bool(body.get("overwrite")))
        return json_response(load_result(table))

    @app.get(f"{base}/namespaces/<ns>/tables/<table>")
    def load_table(ns, table):
        identifier = namespace_of(ns) + (table,)
        if request.method == "HEAD":
            return no_content() if catalog.table_exists(identifier) else Response(status=404)
        return json_response(load_result(catalog.load_table(identifier)))

    @app.post(f"{base}/namespaces/<ns>/tables/<table>")
    def commit_table(ns, table):
        identifier = namespace_of(ns) + (table,)
        body = body_json()
        if body.get("identifier") is not None and identifier_of(body["identifier"], "identifier") != identifier:
            raise RestError(400, "BadRequestException", "the body's identifier is not the table of the path")
        requirements = tuple(REQUIREMENTS.validate_python(body.get("requirements") or []))
        updates = tuple(UPDATES.validate_python(body.get("updates") or []))
        try:
            current = catalog.load_table(identifier)
        except NoSuchTableError:
            if not any(isinstance(r, AssertCreate) for r in requirements):
                raise
            raise RestError(400, "BadRequestException", "creating a table through a commit is not supported by this server")
        # Requirements are checked against the table SqlCatalog loads again inside commit_table; its UPDATE of the
        # iceberg_tables row compares the metadata location it loaded, so a commit that landed in between fails
        # with CommitFailedException (409) instead of being overwritten.
        response = catalog.commit_table(current, requirements, with_fresh_schema_ids(current.metadata, updates))
        return json_response({"metadata-location": response.metadata_location, "metadata": metadata_json(response.metadata)})

    @app.delete(f"{base}/namespaces/<ns>/tables/<table>")
    def drop_table(ns, table):
        identifier = namespace_of(ns) + (table,)
        if request.args.get("purgeRequested", "false").lower() == "true":
            catalog.purge_table(identifier)
        else:
            catalog.drop_table(identifier)
        return no_content()

    @app.post(f"{base}/tables/rename")
    def rename_table():
        body = body_json()
        catalog.rename_table(identifier_of(body.get("source"), "source"), identifier_of(body.get("destination"), "destination"))
        return no_content()

    return app


def main():
    parser = argparse.ArgumentParser(description="An Iceberg REST catalog over pyiceberg's SqlCatalog (for tests).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--catalog-uri", required=True, help="postgres://… URL of the SQL catalog's database")
    parser.add_argument("--catalog-name", required=True)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--token")
    parser.add_argument("--credential", help="CLIENT_ID:SECRET accepted by POST /v1/oauth/tokens")
    parser.add_argument("--prefix")
    parser.add_argument("--property", action="append", default=[], help="KEY=VALUE SqlCatalog property")
    args = parser.parse_args()

    uri = args.catalog_uri
    for scheme in ("postgres://", "postgresql://"):
        if uri.startswith(scheme):
            uri = "postgresql+psycopg2://" + uri[len(scheme):]
    properties = dict(p.split("=", 1) for p in args.property)
    catalog = SqlCatalog(args.catalog_name, uri=uri, warehouse=args.warehouse, **properties)

    token = args.token
    credential = None
    if args.credential:
        if ":" not in args.credential:
            parser.error("--credential must be CLIENT_ID:SECRET")
        credential = tuple(args.credential.split(":", 1))
        token = token or secrets.token_urlsafe(24)

    from werkzeug.serving import WSGIRequestHandler, make_server

    class PlainLog(WSGIRequestHandler):
        # One plain line per request on stderr: method, path with query, status (never a header).
        def log_request(self, code="-", size="-"):
            print(f"{self.command} {self.path} {getattr(code, 'value', code)}", file=sys.stderr, flush=True)

    app = make_app(catalog, token, credential, args.prefix)
    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=PlainLog)
    print(f"ready http://127.0.0.1:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
