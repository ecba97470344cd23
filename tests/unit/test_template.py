"""template.yaml declares what the project promises, and passes cfn-lint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ops.template import TEMPLATE, load, rate_seconds

ROOT = Path(__file__).resolve().parents[2]


def test_template_declares_functions_routes_and_schedule() -> None:
    template = load()
    assert set(template.functions) == {
        "CreatePaymentFunction",
        "HypayCallbackFunction",
        "CleanupFunction",
        "DebugFunction",
        "AdminFunction",
    }
    assert {r.route_key for r in template.routes} == {
        "POST /payments",
        "GET /payments/{payment_id}",
        "GET /hypay/return",
        "GET /hypay/notify",
        "POST /hypay/notify",
        "POST /admin/cleanup-idempotency",
        "GET /debug/test-idempotency",
        "GET /admin/review",
        "POST /admin/payments/{payment_id}/resolve",
        "POST /admin/payments/{payment_id}/refund",
        "POST /admin/refunds/{refund_id}/outcome",
        "POST /admin/transactions/{hypay_id}/close",
    }
    assert template.functions["CleanupFunction"].schedules == ("rate(1 hour)",)
    assert rate_seconds("rate(1 hour)") == 3600


def test_every_function_runs_python_313_with_the_shared_layer() -> None:
    import yaml

    from ops.template import _CfnLoader

    doc = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506
    assert doc["Globals"]["Function"]["Runtime"] == "python3.13"
    assert doc["Globals"]["Function"]["Layers"] == [{"Ref": "SharedLayer"}]
    layer = doc["Resources"]["SharedLayer"]
    # The SAM trap: BuildMethod copies ContentUri into python/, so the package sits right under it.
    assert layer["Metadata"]["BuildMethod"] == "python3.13"
    assert (ROOT / layer["Properties"]["ContentUri"] / "payments" / "__init__.py").exists()


def test_route_matching_extracts_path_parameters() -> None:
    found = load().find_route("GET", "/payments/abc")
    assert found is not None and found[1] == {"payment_id": "abc"}
    assert load().find_route("DELETE", "/payments/abc") is None


def test_template_passes_cfn_lint() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_template_passes_sam_validate_lint() -> None:
    sam = Path(sys.executable).parent / "sam"
    result = subprocess.run(
        [str(sam), "validate", "--lint", "--template-file", str(TEMPLATE)],
        capture_output=True,
        text=True,
        check=False,
        env={
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "SAM_CLI_TELEMETRY": "0",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "HOME": str(ROOT / ".local"),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_payment_routes_have_the_web_app_authorizer_cors_and_throttling() -> None:
    import yaml

    from ops.template import _CfnLoader

    doc = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506
    api = doc["Resources"]["HttpApi"]["Properties"]
    # Each JwtMode's wiring: tests/unit/test_auth_template.py
    issuer = "https://project.supabase.co/auth/v1"
    jwt = load().authorizer("WebApp", {"JwtMode": "rs256", "JwtIssuer": issuer, "JwtAudience": "authenticated"})
    assert (jwt.kind, jwt.issuer, jwt.audience) == ("jwt", issuer, ["authenticated"])
    assert api["CorsConfiguration"]["AllowOrigins"] == {"Ref": "WebAppOrigins"}
    assert "Idempotent-Replayed" in api["CorsConfiguration"]["ExposeHeaders"]
    assert "Idempotency-Key" in api["CorsConfiguration"]["AllowHeaders"]
    assert api["RouteSettings"]["POST /payments"]["ThrottlingRateLimit"] > 0
    secured = {r.route_key for r in load().routes if r.authorizer == "WebApp"}
    assert secured == {"POST /payments", "GET /payments/{payment_id}"}


# The functions' metrics and every alarm on them: the stage's own namespace, so that a dev stack in the same account
# never fires prod's alarms (Powertools' metrics carry only the `service` dimension).
OUR_NAMESPACE = {"Sub": "${MetricsNamespace}-${Stage}"}


def test_the_functions_publish_metrics_to_their_stages_own_namespace() -> None:
    import yaml

    from ops.template import _CfnLoader

    doc = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506
    assert doc["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == OUR_NAMESPACE
    for name, resource in doc["Resources"].items():
        variables = resource.get("Properties", {}).get("Environment", {}).get("Variables", {})
        assert "POWERTOOLS_METRICS_NAMESPACE" not in variables, name  # none publishes elsewhere
    dashboard = doc["Resources"]["PaymentsDashboard"]["Properties"]["DashboardBody"]["Sub"]
    assert '"${MetricsNamespace}"' not in dashboard and dashboard.count('"${MetricsNamespace}-${Stage}"') == 3


def test_alarms_on_verification_failures_and_amount_mismatches_notify_the_topic() -> None:
    import yaml

    from ops.template import _CfnLoader

    resources = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)["Resources"]  # noqa: S506
    alarms: dict[str, dict] = {}
    watched: dict[str, set[str]] = {}  # metric -> the services whose metric an alarm sums
    for r in resources.values():
        if r["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = r["Properties"]
        if "MetricName" in props:
            assert props["Namespace"] == OUR_NAMESPACE or props["Namespace"].startswith("AWS/")
            alarms[props["MetricName"]] = props
            services = {d["Value"] for d in props.get("Dimensions", []) if d["Name"] == "service"}
            watched.setdefault(props["MetricName"], set()).update(services)
            continue
        stats = [m["MetricStat"] for m in props["Metrics"] if "MetricStat" in m]
        [total] = [m for m in props["Metrics"] if m.get("ReturnData")]
        ids = [m["Id"] for m in props["Metrics"] if "MetricStat" in m]
        assert total["Expression"] == f"SUM([{', '.join(ids)}])"  # every series counts
        for stat in stats:
            metric = stat["Metric"]
            assert metric["Namespace"] == OUR_NAMESPACE and stat["Stat"] == "Sum"
            alarms[metric["MetricName"]] = props
            watched.setdefault(metric["MetricName"], set()).update(
                d["Value"] for d in metric["Dimensions"] if d["Name"] == "service"
            )
    assert watched["VerificationFailed"] == {"hypay_callback"}
    # Money that needs a human alarms on the first occurrence, however quiet the shop, from every function that
    # settles a Hyp transaction (callbacks, and saved-card charges in create_payment)
    for metric, services in {
        "AmountMismatch": {"hypay_callback", "create_payment"},
        "PaidNotPending": {"hypay_callback", "create_payment"},
        "ContradictingDelivery": {"hypay_callback", "create_payment"},
        "CallbackNotVerifiable": {"hypay_callback"},
        "CallbackNotSettled": {"hypay_callback"},
        "SecondCharge": {"hypay_callback", "create_payment"},
        "UnmatchedTransaction": {"hypay_callback", "create_payment"},
        "DuplicateTransaction": {"hypay_callback", "create_payment", "admin"},
        "ChargeOutcomeUnknown": {"create_payment"},
        "Cleanup_payments_flagged_for_review": {"cleanup"},
        "Cleanup_refunds_outcome_unknown": {"cleanup"},
        "DatabaseConnectFailed": {"create_payment", "hypay_callback", "cleanup", "admin"},
        "UnhandledError": {"create_payment", "hypay_callback", "cleanup", "admin"},
        "NotConfigured": {"create_payment", "hypay_callback", "cleanup", "admin"},
        "GatewayRefusedOurRequest": {"create_payment", "admin"},
    }.items():
        alarm = alarms[metric]
        assert (alarm["Threshold"], alarm["EvaluationPeriods"]) == (1, 1), metric
        assert watched[metric] == services, metric
        assert alarm["AlarmActions"] == [{"Ref": "AlertsTopic"}], metric
    # And the topic can be published to by CloudWatch: a key of our own that lets it (not the AWS-managed SNS key)
    topic = resources["AlertsTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlertsKey"}
    [grant] = [
        st
        for st in resources["AlertsKey"]["Properties"]["KeyPolicy"]["Statement"]
        if st.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"
    ]
    assert set(grant["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    subscription = resources["AlertsEmailSubscription"]
    assert subscription["Condition"] == "HasAlertEmail" and subscription["Properties"]["Protocol"] == "email"


def test_each_function_may_read_only_the_secrets_it_uses() -> None:
    import yaml

    from ops.template import _CfnLoader

    resources = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)["Resources"]  # noqa: S506

    def secrets(function: str) -> set[str]:
        # Each is `!If [Create<X>Secret, !Ref <X>Secret, !Ref <X>SecretArn]`: the stack's secret, or the one given
        names = set()
        for policy in resources[function]["Properties"]["Policies"]:
            condition, created, given = policy["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]["If"]
            assert created["Ref"] + "Arn" == given["Ref"] and condition == f"Create{created['Ref']}"
            names.add(given["Ref"])
        return names

    assert secrets("CreatePaymentFunction") == {"DbSecretArn", "HypaySecretArn"}
    assert secrets("HypayCallbackFunction") == {"DbSecretArn", "HypaySecretArn"}
    assert secrets("CleanupFunction") == {"DbSecretArn", "AdminTokenSecretArn"}
    assert secrets("DebugFunction") == {"DbSecretArn", "AdminTokenSecretArn"}
    assert secrets("AdminFunction") == {"DbSecretArn", "AdminTokenSecretArn", "HypaySecretArn"}  # refunds ask Hyp
    # No function gets a broader policy than those
    for name in ("CreatePaymentFunction", "HypayCallbackFunction", "CleanupFunction", "DebugFunction", "AdminFunction"):
        assert all(
            set(p) == {"AWSSecretsManagerGetSecretValuePolicy"} for p in resources[name]["Properties"]["Policies"]
        )


def test_template_outputs_the_urls_to_paste_into_hyps_portal() -> None:
    import yaml

    from ops.template import _CfnLoader

    outputs = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)["Outputs"]  # noqa: S506
    assert outputs["HypayReturnUrl"]["Value"]["Sub"].endswith("/hypay/return")
    assert outputs["HypayNotifyUrl"]["Value"]["Sub"].endswith("/hypay/notify")
    assert "ApiUrl" in outputs and "AlertsTopicArn" in outputs and "DashboardName" in outputs


def test_make_run_has_a_curl_example_for_every_route() -> None:
    from ops.run import curl_examples

    routes = load().routes
    examples = curl_examples("http://127.0.0.1:3000", routes)
    assert len(examples) == len(routes)
    for route, example in zip(routes, examples, strict=True):
        assert example.startswith("curl") and route.path.split("{")[0] in example


def test_traces_never_capture_responses_or_arguments() -> None:
    import yaml

    from ops.template import _CfnLoader

    doc = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506
    assert doc["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"
    sources = [*ROOT.glob("functions/*/app.py"), *ROOT.glob("layers/shared/payments/**/*.py")]
    code = "\n".join(p.read_text() for p in sources)
    # Only the handler is traced, without its response; no method is captured with its arguments (a CVV, a token)
    assert "capture_method" not in code
    assert "capture_lambda_handler(capture_response=False)" in code


def _template() -> dict:
    import yaml

    from ops.template import _CfnLoader

    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506


def test_every_parameter_has_a_safe_default_so_a_first_deploy_works() -> None:
    parameters = _template()["Parameters"]
    missing = [name for name, spec in parameters.items() if "Default" not in spec]
    assert missing == [], f"parameters without a default: {missing}"
    # Defaults that are safe: the database is verified, tokens from nowhere are refused, nothing is open
    assert parameters["DbSslMode"]["Default"] == "verify-full"
    assert ".invalid/" in parameters["JwtIssuer"]["Default"]
    assert parameters["NotifyAllowedCidrs"]["Default"] == "" and parameters["Stage"]["Default"] == "dev"


def test_secrets_left_empty_are_created_by_the_stack_with_placeholders_or_generated() -> None:
    resources = _template()["Resources"]
    for name, condition in (("DbSecret", "CreateDbSecret"), ("HypaySecret", "CreateHypaySecret")):
        secret = resources[name]
        assert secret["Condition"] == condition
        assert json.loads(secret["Properties"]["SecretString"])["placeholder"]
    admin = resources["AdminTokenSecret"]["Properties"]["GenerateSecretString"]
    assert admin["PasswordLength"] >= 32


def test_every_function_setting_is_a_parameter() -> None:
    # Every environment variable the settings read is set by the template (local-only ones excepted)
    from payments import settings

    local_only = {
        "DATABASE_URL",
        "HYPAY_MASOF",
        "HYPAY_KEY",
        "HYPAY_PASSP",
        "HYPAY_PREVIOUS_KEY",
        "ADMIN_API_TOKEN",
        "JWT_SECRET",
    }
    declared = set()
    for model in (
        settings.DatabaseSettings,
        settings.IdempotencySettings,
        settings.ApiSettings,
        settings.CallbackSettings,
        settings.CleanupSettings,
        settings.AdminSettings,
        settings.HypaySettings,
        settings.AuthSettings,
    ):
        declared |= set(model.variable_names())
    text = TEMPLATE.read_text()
    unset = sorted(name for name in declared - local_only if f"{name}:" not in text)
    assert unset == [], f"settings the template never sets: {unset}"


def test_concurrency_cap_and_connection_alarm() -> None:
    template = _template()
    resources = template["Resources"]
    for function in ("CreatePaymentFunction", "HypayCallbackFunction"):
        cap = resources[function]["Properties"]["ReservedConcurrentExecutions"]
        assert cap == {"If": ["HasConcurrencyCap", {"Ref": "FunctionConcurrency"}, {"Ref": "AWS::NoValue"}]}
    alarm = resources["DatabaseConnectFailuresAlarm"]["Properties"]
    names = {m["MetricStat"]["Metric"]["MetricName"] for m in alarm["Metrics"] if "MetricStat" in m}
    assert names == {"DatabaseConnectFailed"} and alarm["Threshold"] == 1
    endpoint = resources["SecretsManagerEndpoint"]
    assert endpoint["Condition"] == "CreatesSecretsManagerEndpoint"
    assert endpoint["Properties"]["VpcEndpointType"] == "Interface"


def test_route_settings_name_only_routes_every_stage_has() -> None:
    # A stage's RouteSettings naming a route that does not exist (the debug route, absent in prod) fails the deploy
    resources = _template()["Resources"]
    always = set()
    for resource in resources.values():
        if resource["Type"] != "AWS::Serverless::Function" or "Condition" in resource:
            continue
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                always.add(f"{event['Properties']['Method']} {event['Properties']['Path']}")
    named = set(resources["HttpApi"]["Properties"]["RouteSettings"])
    assert named <= always, named - always


def test_secret_arns_must_be_full_arns_and_timeouts_fit_the_functions_timeout() -> None:
    # A secret's name or partial ARN would make an IAM resource that matches nothing: every read denied at run time
    import re

    params = _template()["Parameters"]
    for name in ("DbSecretArn", "HypaySecretArn", "AdminTokenSecretArn", "JwtSecretArn"):
        pattern = re.compile(params[name]["AllowedPattern"])
        assert pattern.fullmatch(""), name
        assert pattern.fullmatch("arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/prod/db-AbC123"), name
        for wrong in ("payments/prod/db", "arn:aws:secretsmanager:eu-west-1:secret:db", "arn:aws:s3:::bucket"):
            assert not pattern.fullmatch(wrong), (name, wrong)
    # Hyp's and the database's waits stay within the API functions' 20 s
    template = _template()
    timeout = template["Globals"]["Function"]["Timeout"]
    for name in ("HypayTimeout", "HypayBudget", "DbQueryTimeout", "DbConnectTimeout"):
        assert params[name]["MaxValue"] < timeout, name
    # And the admin function's same-day refund may ask Hyp twice in a row (CancelTrans refused, then zikoyAPI):
    # both fit, with room for the database, under API Gateway's 30 s
    admin = template["Resources"]["AdminFunction"]["Properties"]["Timeout"]
    assert 2 * params["HypayTimeout"]["MaxValue"] + 5 <= admin < 30


# The functions CloudFormation allows in Rules (the rule functions, and Ref): cfn-lint does not look inside Rules,
# and a Fn::Join there, which Conditions allow, fails the stack operation.
_RULE_FUNCTIONS = {
    "And",
    "Contains",
    "EachMemberEquals",
    "EachMemberIn",
    "Equals",
    "Not",
    "Or",
    "RefAll",
    "ValueOf",
    "ValueOfAll",
    "Ref",
}


def _rule_functions_used(node: object) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_rule_functions_used(item) for item in node))
    if not isinstance(node, dict):
        return set()
    found = set()
    for key, value in node.items():
        if key not in ("RuleCondition", "Assertions", "Assert", "AssertDescription"):
            found.add(key.removeprefix("Fn::"))
        found |= _rule_functions_used(value)
    return found


def _evaluate_rule(node: object, values: dict[str, object]) -> object:
    """The rule functions this template uses, as CloudFormation evaluates them (an empty CommaDelimitedList is
    [""])."""
    if not isinstance(node, dict):
        return node
    [(name, args)] = node.items()
    name = name.removeprefix("Fn::")
    if name == "Ref":
        return values[args]
    evaluated = [_evaluate_rule(a, values) for a in args]
    if name == "Not":
        return not evaluated[0]
    if name == "Equals":
        return evaluated[0] == evaluated[1]
    if name == "EachMemberEquals":
        return all(member == evaluated[1] for member in evaluated[0])
    raise AssertionError(f"no evaluator for {name}")


def test_rules_use_only_rule_functions_and_catch_a_half_given_vpc() -> None:
    import yaml

    from ops.template import _CfnLoader

    rules = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)["Rules"]  # noqa: S506
    assert set().union(*(_rule_functions_used(rule) for rule in rules.values())) <= _RULE_FUNCTIONS

    def failed(**given: object) -> set[str]:
        values: dict[str, object] = {
            "VpcSubnetIds": [""],
            "VpcSecurityGroupIds": [""],
            "VpcId": "",
            "CreateSecretsManagerEndpoint": "false",
            "JwtMode": "rs256",
            "JwtSecretArn": "",
            **given,
        }
        return {
            name
            for name, rule in rules.items()
            if _evaluate_rule(rule.get("RuleCondition", True), values)
            and not all(_evaluate_rule(a["Assert"], values) for a in rule["Assertions"])
        }

    assert failed() == set()  # the defaults deploy
    assert failed(VpcSubnetIds=["subnet-1", "subnet-2"]) == {"SubnetsNeedSecurityGroups"}
    assert failed(VpcSubnetIds=["subnet-1"], VpcSecurityGroupIds=["sg-1"]) == set()
    assert failed(CreateSecretsManagerEndpoint="true") == {"SecretsManagerEndpointNeedsTheVpc"}
    vpc = {"VpcSubnetIds": ["subnet-1"], "VpcSecurityGroupIds": ["sg-1"], "VpcId": "vpc-1"}
    assert failed(CreateSecretsManagerEndpoint="true", **vpc) == set()
    assert failed(JwtMode="hs256") == {"JwtSecretForHs256"}


def test_every_function_logs_to_a_group_of_the_stacks_kept_log_retention_days() -> None:
    import yaml

    from ops.template import _CfnLoader

    doc = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506
    resources = doc["Resources"]
    functions = {n: r for n, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    assert len(functions) == 6
    for name, function in functions.items():
        group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        logs = resources[group]
        assert logs["Type"] == "AWS::Logs::LogGroup" and logs.get("Condition") == function.get("Condition"), name
        assert logs["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
        # kept when the stack goes, but not when the deploy that creates it rolls back (its fixed name would
        # make the next deploy fail)
        assert (logs["DeletionPolicy"], logs["UpdateReplacePolicy"]) == ("RetainExceptOnCreate", "Retain"), name
    assert resources["ApiAccessLogs"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert doc["Parameters"]["LogRetentionDays"]["Default"] == 90


def test_make_run_passes_every_setting_through() -> None:
    # `HYPAY_VERIFY_MODE=hmac make run`: every variable payments.settings reads, not only the template's
    from ops.run import setting_names
    from payments import settings

    names = setting_names(load())
    for read in (settings.DatabaseSettings, settings.AuthSettings, settings.CleanupSettings, settings.HypaySettings):
        assert set(read.variable_names()) <= names, read
    assert {"DB_CONNECT_TIMEOUT", "JWKS_TIMEOUT", "HYPAY_KEY"} <= names


def test_make_run_takes_no_issuer_setting_it_would_lose_to_its_local_issuer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given make run started with the settings of another issuer (a Supabase project's), and one it does take
    from ops.run import LOCAL_ISSUER_SETTINGS, from_environment, not_taken, setting_names

    for name in LOCAL_ISSUER_SETTINGS:  # whatever the environment running the tests has
        monkeypatch.delenv(name, raising=False)

    given = {
        "JWT_MODE": "hs256",
        "JWT_ISSUER": "https://project.supabase.co/auth/v1",
        "JWT_SECRET": "a-project-secret-0123456789abcdef",
        "JWKS_URL": "https://project.supabase.co/auth/v1/.well-known/jwks.json",
        "HYPAY_VERIFY_MODE": "hmac",
    }
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    names = setting_names(load())
    # Then the issuer's are not taken (the local authorizer accepts the local issuer's tokens, whatever is given: were
    # they listed as taken, a token of the issuer given would be refused while the banner said it was in use), and the
    # banner names them as not taken
    taken = from_environment(names)
    assert taken["HYPAY_VERIFY_MODE"] == "hmac" and not LOCAL_ISSUER_SETTINGS & set(taken), taken
    assert not_taken(names) == ["JWKS_URL", "JWT_ISSUER", "JWT_MODE", "JWT_SECRET"]
