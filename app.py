import spaces  # noqa: F401, I001 - first: on a ZeroGPU Space it must patch torch before anything else loads it

from lifelong.ui.app import create_app

__all__ = ["create_app"]

if __name__ == "__main__":
    create_app().launch()
