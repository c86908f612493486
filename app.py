"""The classifier guidance demo: `python app.py [--checkpoints DIR] [--host H] [--port P] [--share]`.

The page is built in demo/ui.py; `python app.py --help` lists every option.
"""
import sys


def main(argv=None) -> int:
    from demo.launch import launch, parse_args  # torch, gradio and the checkpoints load only when run

    return launch(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
