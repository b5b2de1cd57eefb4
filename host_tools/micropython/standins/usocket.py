# umqtt.simple imports `usocket`; on the WebAssembly port that is this file's neighbour.
from socket import *  # noqa: F403
