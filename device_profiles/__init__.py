"""Device profiles shipped with memdeploy, as TOML files beside this module.

`memdeploy.profiles` reads them by name (`memdeploy profiles list`). The folder is a
package so that a wheel carries the files.
"""
