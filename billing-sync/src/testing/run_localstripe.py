"""Starts localstripe (PyPI, pinned by the tests) on 127.0.0.1 and prints its port.

localstripe's own command binds every interface and pickles its whole state after each write to
/tmp/localstripe.pickle, which two instances at once would overwrite; this starts its app on
loopback (port 0: any free one) and keeps the state in this process only.
"""
import asyncio
import sys

from aiohttp import web

import localstripe.resources as resources

resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None

from localstripe.server import app  # noqa: E402  (after the patches above)


async def main(port):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
