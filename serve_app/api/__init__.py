"""The HTTP and WebSocket surface (Ray-free): the router app, the Realtime protocol, the REST API,
credentials and admission.
"""
