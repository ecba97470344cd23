"""The template wires the web app's authorizer by JwtMode: rs256 keeps API Gateway's JWT authorizer, hs256 and
es256 put the Lambda authorizer (simple responses, cached) in front of the same routes, with only the IAM each
mode needs. Checked on the template and on what SAM makes of it."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import yaml

from ops.template import TEMPLATE, _CfnLoader, load, resolve

SECURED = {"POST /payments", "GET /payments/{payment_id}"}
PARAMETERS = {
    "JwtIssuer": "https://project.supabase.co/auth/v1",
    "JwtSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/jwt",
    "JwksUrl": "https://project.supabase.co/auth/v1/.well-known/jwks.json",
}


def doc() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def deployed(mode: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The template's resources as CloudFormation creates them for `mode`: conditional ones dropped, If resolved."""
    template = load()
    values = template.parameter_values({"JwtMode": mode, **PARAMETERS})
    resources = {
        name: resolve(resource, values, template.conditions)
        for name, resource in doc()["Resources"].items()
        if "Condition" not in resource or template.condition(resource["Condition"], values)
    }
    return resources, values


def test_jwt_mode_is_a_choice_of_three_defaulting_to_the_jwt_authorizer() -> None:
    # (the default issuer matches no token: a first deploy refuses every call until JwtIssuer is set)
    parameter = doc()["Parameters"]["JwtMode"]
    assert parameter["AllowedValues"] == ["hs256", "rs256", "es256"] and parameter["Default"] == "rs256"
    rule = doc()["Rules"]["JwtSecretForHs256"]
    assert rule["RuleCondition"] == {"Equals": [{"Ref": "JwtMode"}, "hs256"]}
    assert rule["Assertions"][0]["Assert"] == {"Not": [{"Equals": [{"Ref": "JwtSecretArn"}, ""]}]}


def test_the_payment_routes_and_only_they_name_the_web_app_authorizer() -> None:
    template = load()
    assert {r.route_key for r in template.routes if r.authorizer} == SECURED
    assert {r.authorizer for r in template.routes if r.authorizer} == {"WebApp"}
    # The authorizer function is not a route function (no resolver, no OpenAPI)
    assert "AuthorizerFunction" not in template.functions and "AuthorizerFunction" in template.authorizer_functions


def test_rs256_keeps_the_jwt_authorizer_and_deploys_no_lambda_authorizer() -> None:
    authorizer = load().authorizer("WebApp", {"JwtMode": "rs256", **PARAMETERS})
    assert (authorizer.kind, authorizer.identity_header) == ("jwt", "authorization")
    assert (authorizer.issuer, authorizer.audience) == (PARAMETERS["JwtIssuer"], ["authenticated"])
    resources, _ = deployed("rs256")
    assert not {"AuthorizerFunction", "AuthorizerInvokePermission", "AuthorizerErrorsAlarm"} & set(resources)
    # The handlers still require the role themselves (the JWT authorizer cannot)
    assert doc()["Globals"]["Function"]["Environment"]["Variables"]["JWT_REQUIRED_ROLE"] == {"Ref": "JwtRequiredRole"}


@pytest.mark.parametrize("mode", ["hs256", "es256"])
def test_hs256_and_es256_use_the_lambda_authorizer_with_simple_cached_answers(mode: str) -> None:
    authorizer = load().authorizer("WebApp", {"JwtMode": mode, **PARAMETERS})
    assert authorizer.kind == "lambda" and authorizer.function == "AuthorizerFunction"
    assert authorizer.simple_responses and authorizer.payload_format_version == "2.0"
    assert authorizer.identity_header == "authorization" and 0 < authorizer.ttl_seconds <= 3600
    resources, values = deployed(mode)
    function = resources["AuthorizerFunction"]["Properties"]
    assert function["CodeUri"] == "functions/authorizer" and function["Timeout"] <= 10
    env = function["Environment"]["Variables"]
    assert env["JWT_MODE"] == mode and env["JWT_ISSUER"] == PARAMETERS["JwtIssuer"]
    assert env["JWT_AUDIENCE"] == "authenticated" and env["JWKS_URL"] == PARAMETERS["JwksUrl"]
    # API Gateway may invoke it, for this API's authorizers only
    permission = resources["AuthorizerInvokePermission"]["Properties"]
    assert permission["Principal"] == "apigateway.amazonaws.com"
    assert permission["FunctionName"] == {"GetAtt": "AuthorizerFunction.Arn"}
    assert "${HttpApi}/authorizers/*" in permission["SourceArn"]["Sub"]
    # Its failures alarm (every payment call answers 500 then)
    assert resources["AuthorizerErrorsAlarm"]["Properties"]["AlarmActions"] == [{"Ref": "AlertsTopic"}]
    # Only hs256 may read the JWT secret; es256 reads no secret at all
    policies = [p for p in function["Policies"] if p != {"Ref": "AWS::NoValue"}]
    if mode == "hs256":
        assert policies == [{"AWSSecretsManagerGetSecretValuePolicy": {"SecretArn": PARAMETERS["JwtSecretArn"]}}]
        assert env["JWT_SECRET_ARN"] == PARAMETERS["JwtSecretArn"]
    else:
        assert policies == [] and env["JWT_SECRET_ARN"] == ""


def test_sam_turns_the_wiring_into_one_conditional_security_scheme() -> None:
    # Given SAM's own translation of the template (what cfn-lint and `sam deploy` run)
    template, out = sam_translated()
    resources = out["Resources"]
    body = resources["HttpApi"]["Properties"]["Body"]
    # Then exactly the payment routes carry the WebApp scheme, with their Lambda integrations
    secured = {
        f"{method.upper()} {path}"
        for path, item in body["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == [{"WebApp": []}]
    }
    assert secured == SECURED
    assert all("x-amazon-apigateway-integration" in body["paths"][k.split()[1]][k.split()[0].lower()] for k in SECURED)
    # And the scheme is the JWT authorizer or the Lambda one, by the same condition as the function
    condition, jwt_scheme, lambda_scheme = body["components"]["securitySchemes"]["WebApp"]["Fn::If"]
    assert condition == "UsesJwtAuthorizer"
    assert jwt_scheme["x-amazon-apigateway-authorizer"]["type"] == "jwt"
    lambda_authorizer = lambda_scheme["x-amazon-apigateway-authorizer"]
    assert lambda_authorizer["type"] == "request" and lambda_authorizer["enableSimpleResponses"] is True
    assert "${AuthorizerFunction.Arn}" in lambda_authorizer["authorizerUri"]["Fn::Sub"]
    for name in ("AuthorizerFunction", "AuthorizerFunctionRole", "AuthorizerInvokePermission"):
        assert resources[name]["Condition"] == "UsesLambdaAuthorizer", name
    assert out["Conditions"]["UsesLambdaAuthorizer"] == {"Fn::Not": [{"Condition": "UsesJwtAuthorizer"}]}


def sam_translated(code: str = "key", layer: str = "key") -> tuple[dict[str, Any], dict[str, Any]]:
    """(the template as SAM reads it, SAM's own translation of it: what cfn-lint and `sam deploy` run), with the
    functions' code and the layer's content uploaded under these keys (`sam package` names them by content)."""
    from samtranslator.translator.transform import transform

    template = doc_json()
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://bucket/{name}-{code}"
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            resource["Properties"]["ContentUri"] = f"s3://bucket/layer-{layer}"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    return template, transform(json.loads(json.dumps(template)), {}, NoManagedPolicies())


def doc_json() -> dict[str, Any]:
    """The template in CloudFormation's long form (Fn::..., Ref), as SAM reads it."""
    from samtranslator.yaml_helper import yaml_parse

    return json.loads(json.dumps(yaml_parse(TEMPLATE.read_text())))


def test_snapstart_is_an_option_off_by_default_on_published_versions() -> None:
    # Given SAM's translation of the template
    template, out = sam_translated()
    resources = out["Resources"]
    functions = {k: v for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"}
    assert functions
    # Then every function takes SnapStart on published versions only when SnapStart=on (default off)
    assert template["Parameters"]["SnapStart"]["Default"] == "off"
    assert out["Conditions"]["UsesSnapStart"] == {"Fn::Equals": [{"Ref": "SnapStart"}, "on"]}
    for name, function in functions.items():
        assert function["Properties"]["SnapStart"] == {
            "Fn::If": ["UsesSnapStart", {"ApplyOn": "PublishedVersions"}, {"Ref": "AWS::NoValue"}]
        }, name
        # And each has a published version behind the alias `live` (what a snapshot is taken of)
        assert f"{name}Aliaslive" in resources, name
    # And the API invokes the alias, so requests get the snapshot's version
    body = json.dumps(resources["HttpApi"]["Properties"]["Body"])
    assert "CreatePaymentFunctionAliaslive" in body


def _versions(out: dict[str, Any]) -> dict[str, str]:
    """Each function's published version (SAM names it by a hash of what it publishes)."""
    return {
        v["Properties"]["FunctionName"]["Ref"]: k
        for k, v in out["Resources"].items()
        if v["Type"] == "AWS::Lambda::Version"
    }


def test_a_deploy_publishes_new_versions_when_the_code_or_the_shared_layer_changes() -> None:
    # The API and the schedule invoke the alias `live`: a change that publishes no version never reaches them.
    # SAM hashes only a function's own code unless told to hash all its properties, and the layer's version
    # counts only when the layer says so (almost all the logic is in the layer).
    before = _versions(sam_translated()[1])
    assert len(before) == 6
    code_changed = _versions(sam_translated(code="new")[1])
    layer_changed = _versions(sam_translated(layer="new")[1])
    for function, version in before.items():
        assert code_changed[function] != version, function
        assert layer_changed[function] != version, function
    # And the same code and layer publish nothing new
    assert _versions(sam_translated()[1]) == before
