const http = require('http');
const port = process.env.PORT || 8000;
http.createServer((req, res) => res.end('Hello from Node on OSv\n')).listen(port);
