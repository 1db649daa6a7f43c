import spaces  # noqa: F401, I001 - first: on a ZeroGPU Space it must patch torch before anything else loads it

from lifelong.ui.app import create_app, default_studio, max_upload_bytes

__all__ = ["create_app"]

if __name__ == "__main__":
    studio = default_studio()
    create_app(studio).launch(max_file_size=max_upload_bytes(studio.base))
