from tools.config_docs import PAGE, render


def test_configuration_page_is_up_to_date():
    assert PAGE.read_text() == render(), "docs/configuration.md is stale: run `python -m tools.config_docs`"
