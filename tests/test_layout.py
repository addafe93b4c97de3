"""The layout says what runs where: the system under test never loads the lab's heavy libraries."""

import subprocess
import sys

import pytest

SYSTEM = ["comlab.system.server", "comlab.system.worker", "comlab.system.client",
          "comlab.system.worker_host", "comlab.run_server", "comlab.run_client"]


@pytest.mark.parametrize("module", SYSTEM)
def test_system_modules_import_no_pandas_or_matplotlib(module):
    # A fresh interpreter: this test process has imported pandas long ago.
    code = (f"import sys, {module}; "
            "print(','.join(m for m in ('pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "", f"importing {module} loaded {out}"
