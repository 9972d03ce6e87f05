"""A WeChat simulator: a real HTTP server on loopback that issues tokens and
answers ``card/invoice/platform/updatestatus`` as WeChat does, records every
call and injects faults. Tests, benchmarks and the demo talk to it;
production talks to WeChat.

* ``WeChatSimulator`` (``devtools.simulator.state``): the state and rules, no I/O.
* ``build_app``, ``SimulatorServer``, ``serve``, ``main`` (``devtools.simulator.server``).
* ``SimulatorControl`` (``devtools.simulator.control``): the control API over HTTP.
"""

from devtools.simulator.control import SimulatorControl, SimulatorError
from devtools.simulator.server import SimulatorServer, build_app, main, serve
from devtools.simulator.state import (
    DEFAULT_ACCOUNTS,
    DEFAULT_AUTHORIZERS,
    DEFAULT_COMPONENTS,
    DEMO_APPID,
    DEMO_AUTHORIZER_APPIDS,
    DEMO_COMPONENT_APPID,
    DEMO_COMPONENT_SECRET,
    DEMO_SECRET,
    DEMO_VERIFY_TICKET,
    ERRMSG,
    CallRecord,
    Card,
    FaultRule,
    TokenCallRecord,
    WeChatSimulator,
    token_fingerprint,
)

__all__ = [
    "DEFAULT_ACCOUNTS",
    "DEFAULT_AUTHORIZERS",
    "DEFAULT_COMPONENTS",
    "DEMO_APPID",
    "DEMO_AUTHORIZER_APPIDS",
    "DEMO_COMPONENT_APPID",
    "DEMO_COMPONENT_SECRET",
    "DEMO_SECRET",
    "DEMO_VERIFY_TICKET",
    "ERRMSG",
    "CallRecord",
    "Card",
    "FaultRule",
    "SimulatorControl",
    "SimulatorError",
    "SimulatorServer",
    "TokenCallRecord",
    "WeChatSimulator",
    "build_app",
    "main",
    "serve",
    "token_fingerprint",
]
