"""Starts localstripe (PyPI, pinned by the tests) on 127.0.0.1 and prints its port.

localstripe's own command binds every interface and pickles its whole state after each write to
/tmp/localstripe.pickle, which two instances at once would overwrite; this starts its app on
loopback (port 0: any free one) and keeps the state in this process only. One more change to the
stand-in itself, none to what meter sends or reads: its lists are read from an index by kind
(the same objects in the same order, found without scanning every object).
"""
import asyncio
import sys

from aiohttp import web

import localstripe.resources as resources

resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None

# localstripe lists objects of one kind (a customer's invoices, pending invoice items) by scanning
# every object it holds, so it slows down as it fills: past about 2,000 invoices it, not the rate
# limit, set the pace of a sync. Keep the same objects also indexed by kind, in the same order, and
# list from that index. What any request answers is unchanged: the same objects in the same order,
# found faster.
_by_kind = {}


def _kind(key):
    # Only "kind:id" keys are listed; localstripe also keeps its balance under the bare key "balance".
    return key.split(":", 1)[0] if ":" in key else None


def _set(self, key, value):
    dict.__setitem__(self, key, value)
    _by_kind.setdefault(_kind(key), {})[key] = value


def _del(self, key):
    dict.__delitem__(self, key)
    _by_kind.get(_kind(key), {}).pop(key, None)


def _clear(self):
    dict.clear(self)
    _by_kind.clear()


resources.Store.__setitem__ = _set
resources.Store.__delitem__ = _del
resources.Store.clear = _clear


def _list_all(cls, url, limit=None, starting_after=None, **kwargs):
    if kwargs:
        raise resources.UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
    li = resources.List(url, limit=limit, starting_after=starting_after)
    li._list = list(_by_kind.get(cls.object, {}).values())
    return li


resources.StripeObject._api_list_all = classmethod(_list_all)

from localstripe.server import app  # noqa: E402  (after the patches above)


async def main(port):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
