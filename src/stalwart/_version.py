"""The package version, in a leaf module: code that reports it (the OIP server metadata,
the OpenAPI document) imports it from here, so nothing inside the package imports the
package face ``stalwart/__init__.py``."""

__version__ = "0.1.0"
