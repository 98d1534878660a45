"""Shared pytest options: ``--runslow`` enables the suites marked ``slow``."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (whole networks, P&R sweeps, long random runs)")
    parser.addoption("--programs", type=int, default=1667,
                     help="random programs per configuration in the long program regression "
                          "(default 1667: about 10,000 over its six configurations)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
