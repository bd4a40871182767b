
import pytest

from tests.cache_dir import kernel_cache_at


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """One kernel cache for the whole session (every kernel compiles once), away from the
    user's own cache."""
    with kernel_cache_at(tmp_path_factory.mktemp("symgrad-cache")) as path:
        yield path
