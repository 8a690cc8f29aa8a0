import re
from pathlib import Path

import mit_semseg


def test_the_package_never_calls_cuda_directly():
    package = Path(mit_semseg.__file__).parent
    pattern = re.compile(r"\.cuda\(\)|device=['\"]cuda")
    offenders = [f"{path.relative_to(package)}:{number}"
                 for path in sorted(package.rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []
