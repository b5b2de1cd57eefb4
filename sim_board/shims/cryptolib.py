"""`cryptolib.aes` (ECB=1, CBC=2, CTR=6) backed by OpenSSL through `cryptography`."""
import types

MODE_ECB = 1
MODE_CBC = 2
MODE_CTR = 6


def build(board, runtime):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    m = types.ModuleType("cryptolib")
    m.MODE_ECB = MODE_ECB
    m.MODE_CBC = MODE_CBC
    m.MODE_CTR = MODE_CTR

    class aes:
        """One cipher object, used for encrypting or for decrypting, never both."""

        def __init__(self, key, mode, IV=None):
            key = bytes(key)
            if len(key) not in (16, 32):
                raise ValueError("key")
            if mode == MODE_ECB:
                chosen = modes.ECB()
            elif mode in (MODE_CBC, MODE_CTR):
                if IV is None or len(IV) != 16:
                    raise ValueError("IV")
                chosen = modes.CBC(bytes(IV)) if mode == MODE_CBC else modes.CTR(bytes(IV))
            else:
                raise ValueError("mode")
            self._mode = mode
            self._cipher = Cipher(algorithms.AES(key), chosen)
            self._ctx = None
            self._direction = None

        def _run(self, direction, in_buf, out_buf):
            if self._direction not in (None, direction):
                raise OSError("can't encrypt & decrypt")  # MicroPython's message
            data = bytes(in_buf)
            if self._mode != MODE_CTR and len(data) % 16:
                raise ValueError("blksize")
            if self._ctx is None:
                self._direction = direction
                c = self._cipher
                self._ctx = c.encryptor() if direction == "enc" else c.decryptor()
            result = self._ctx.update(data)
            if out_buf is None:
                return result
            if len(out_buf) < len(result):
                raise ValueError("output too small")
            out_buf[: len(result)] = result
            return None

        def encrypt(self, in_buf, out_buf=None):
            return self._run("enc", in_buf, out_buf)

        def decrypt(self, in_buf, out_buf=None):
            return self._run("dec", in_buf, out_buf)

    m.aes = aes
    return m
