"""The CRL distribution point and the OCSP responder: aiohttp routes for relying parties."""
