"""``python -m planner``: the ksm-planner command line."""

from planner.cli import main

if __name__ == "__main__":
    main()
